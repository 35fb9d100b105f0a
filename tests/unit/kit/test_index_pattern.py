import pytest

from glmfleet.kit.index_pattern import DEFAULT_PATTERN, check_pattern, derive, skip_count


def test_default_is_the_recipes_validated_pattern():
    assert DEFAULT_PATTERN.startswith("FFFSSSFSSSFSSS")
    assert len(DEFAULT_PATTERN) == 78
    assert DEFAULT_PATTERN.count("F") == 21 and skip_count(DEFAULT_PATTERN) == 57


def test_derived_from_indexer_types():
    types = ["full" if c == "F" else "shared" for c in DEFAULT_PATTERN]
    assert derive({"num_hidden_layers": 78, "indexer_types": types}) == (
        DEFAULT_PATTERN, "config.json indexer_types")


def test_length_checked_against_layer_count():
    types = ["full"] * 77
    with pytest.raises(ValueError, match="78 F/S characters"):
        derive({"num_hidden_layers": 78, "indexer_types": types})


def test_unknown_indexer_type_refused():
    with pytest.raises(ValueError, match=r"indexer_types\[1\]"):
        derive({"indexer_types": ["full", "banana"] + ["full"] * 76})


def test_fallback_and_override():
    assert derive({}) == (DEFAULT_PATTERN, "recipe default")
    assert derive(None) == (DEFAULT_PATTERN, "recipe default")
    custom = "F" * 78
    assert derive({"indexer_types": ["shared"] * 78}, override=custom) == (custom, "override")
    with pytest.raises(ValueError, match="malformed"):
        derive({}, override="FSX")


def test_check_pattern_messages():
    assert check_pattern(DEFAULT_PATTERN) is None
    assert "F and S" in check_pattern("")
    assert "starting with F" in check_pattern("S" * 78)
