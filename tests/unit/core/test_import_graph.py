"""The layout's rule, checked on every import statement (function-level ones included):
a stage package imports only the shared core and glmfleet/kit/, never another stage;
the core (runctx included) imports no stage; kit imports no stage."""

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[3] / "glmfleet"
STAGES = {"preflight", "docker", "weights", "service", "gateway"}


def owner(module: str) -> str:
    """'glmfleet.weights.ops' -> 'weights'; 'glmfleet.settings' -> 'core'."""
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES | {"kit"}:
        return parts[1]
    return "core"


def imports(path: Path):
    rel = path.relative_to(PKG.parent).with_suffix("")
    here = ".".join(rel.parts)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = here.split(".")[: -node.level]
                names = [".".join(base + ([node.module] if node.module else []))]
            else:
                names = [node.module or ""]
            # `from glmfleet import runctx` names a module too
            names += [f"{names[0]}.{a.name}" for a in node.names]
        else:
            continue
        for n in names:
            if n == "glmfleet" or n.startswith("glmfleet."):
                yield here, n


def edges():
    for path in sorted(PKG.rglob("*.py")):
        for here, target in imports(path):
            if target in ("glmfleet",):
                continue
            yield owner(here), here, owner(target), target


def test_stages_import_only_core_kit_and_themselves():
    bad = [f"{here} -> {target}" for src, here, dst, target in edges()
           if src in STAGES and dst in STAGES and dst != src]
    assert not bad, bad


def test_core_and_kit_import_no_stage():
    bad = [f"{here} -> {target}" for src, here, dst, target in edges()
           if src in ("core", "kit") and dst in STAGES]
    assert not bad, bad


def test_every_stage_folder_exists():
    for stage in STAGES | {"kit"}:
        assert (PKG / stage / "__init__.py").is_file(), stage
