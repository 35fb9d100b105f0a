"""Synthetic GLM-like checkpoint for the Hugging Face Hub TEST DOUBLE (not a real model).

The deploy only ever handles the checkpoint as files: it downloads them, hashes them, reads
config.json (for `indexer_types`) and may peek at safetensors headers. So the double needs
files with the same *shape* as the real 313 GB checkpoint, just tiny: the real file names,
a config.json whose `indexer_types` give the recipe's validated pattern, an index whose
weight_map matches the shards, and shards that are valid safetensors files filled with
deterministic pseudo-random bytes (so every hash is stable for a given seed).

Stdlib only, so it can also run inside a bare test host.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

NUM_LAYERS = 78  # decoder layers of GLM-5.2; layer 78 is the MTP layer, stored after them
FIRST_DENSE = 3  # layers 0-2 are dense, the rest MoE
# The recipe's validated index pattern (glmfleet/kit/index_pattern.py): FFF, SSS, then FSSS x 18.
INDEX_PATTERN = "FFF" + "SSS" + "FSSS" * 18
assert len(INDEX_PATTERN) == NUM_LAYERS

# Suffixes stored in Git LFS. The Hub publishes a sha256 only for LFS files; every other file
# is checked by its git blob sha1. .gitattributes is generated from this tuple so the two agree.
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".msgpack", ".h5")

# Directories a local download dir holds that are not part of the repo (same rule as
# `hf cache verify`): the client's metadata cache and a git checkout.
IGNORED_TOP_DIRS = (".cache", ".git")

_DTYPE_SIZE = {"F32": 4, "BF16": 2, "U8": 1, "F8_E4M3": 1}
_HIDDEN = 64  # synthetic width: real names, toy shapes


def is_lfs(path: str) -> bool:
    return path.endswith(LFS_SUFFIXES)


def lfs_pointer(sha256: str, size: int) -> bytes:
    """The Git LFS pointer text; git stores this instead of the content, so its sha1 is the
    file's git object id on the Hub (tree `oid`, sibling `blobId`)."""
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n".encode()


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _hash_file(path: Path) -> tuple[int, str, str]:
    """(size, sha256, git blob sha1) of a file in one streaming pass."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    sha1 = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    return size, sha256.hexdigest(), sha1.hexdigest()


def scan(root: str | os.PathLike) -> dict:
    """Manifest of the files under `root` (any directory, not only one made here).

    Returns {"files": [entry, ...] sorted by path, "total_size": bytes}. Each entry:
      path        repo-relative, "/"-separated
      size        content bytes
      sha256      of the content (all files; the Hub publishes it for LFS files only)
      git_sha1    git blob sha1 of the content (what `hf cache verify` checks for non-LFS files)
      lfs         True for LFS files; those also carry
      pointer_sha1, pointer_size   the LFS pointer's git sha1 and length (the Hub's oid/blobId)
    """
    root = Path(root)
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in IGNORED_TOP_DIRS]
        dirnames.sort()
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            size, sha256, sha1 = _hash_file(Path(dirpath) / name)
            entry = {"path": rel, "size": size, "sha256": sha256, "git_sha1": sha1, "lfs": is_lfs(rel)}
            if entry["lfs"]:
                pointer = lfs_pointer(sha256, size)
                entry["pointer_sha1"] = git_blob_sha1(pointer)
                entry["pointer_size"] = len(pointer)
            files.append(entry)
    files.sort(key=lambda e: e["path"])
    return {"files": files, "total_size": sum(e["size"] for e in files)}


def indexer_types() -> list[str]:
    """config.json's per-layer list, spelled the way glmfleet.kit.index_pattern reads it."""
    return ["full" if c == "F" else "shared" for c in INDEX_PATTERN]


def _shard_tensors(shard: int, shards: int, shard_bytes: int) -> list[tuple[str, str, list[int]]]:
    """(name, dtype, shape) of the tensors in one shard. Layers are spread evenly over the
    shards, each gets a few small tensors with the real checkpoint's naming (NVFP4 packed
    weights as U8 plus FP8/F32 scales, an indexer only on "full" layers) and one filler
    tensor sized so the shard comes out near `shard_bytes`."""
    layers = [n for n in range(NUM_LAYERS) if n * shards // NUM_LAYERS == shard]
    fixed: list[tuple[str, str, list[int]]] = []
    if shard == 0:
        fixed.append(("model.embed_tokens.weight", "BF16", [256, _HIDDEN]))
    if shard == shards - 1:
        fixed += [("model.norm.weight", "BF16", [_HIDDEN]),
                  ("lm_head.weight", "BF16", [256, _HIDDEN]),
                  (f"model.layers.{NUM_LAYERS}.eh_proj.weight", "BF16", [_HIDDEN, 2 * _HIDDEN])]
    for n in layers:
        p = f"model.layers.{n}"
        fixed += [(f"{p}.input_layernorm.weight", "BF16", [_HIDDEN]),
                  (f"{p}.self_attn.q_a_proj.weight", "U8", [_HIDDEN, _HIDDEN // 2]),
                  (f"{p}.self_attn.q_a_proj.weight_scale", "F8_E4M3", [_HIDDEN, _HIDDEN // 16]),
                  (f"{p}.self_attn.q_a_proj.weight_scale_2", "F32", [])]
        if INDEX_PATTERN[n] == "F":
            fixed.append((f"{p}.self_attn.indexer.wq_b.weight", "BF16", [_HIDDEN, _HIDDEN]))
    used = sum(_nbytes(d, s) for _, d, s in fixed)
    per_layer = max(0, shard_bytes - used) // max(1, len(layers))
    fill_cols = 256
    for n in layers:
        name = (f"model.layers.{n}.mlp.down_proj.weight" if n < FIRST_DENSE
                else f"model.layers.{n}.mlp.experts.0.down_proj.weight")
        fixed.append((name, "U8", [max(1, per_layer // fill_cols), fill_cols]))
    return fixed


def _nbytes(dtype: str, shape: list[int]) -> int:
    n = _DTYPE_SIZE[dtype]
    for d in shape:
        n *= d
    return n


def _write_safetensors(path: Path, tensors: list[tuple[str, str, list[int]]], seed_label: str) -> int:
    """Write a valid safetensors file; return its tensor data size (for the index's total_size).

    Layout: u64 little-endian header length, JSON header padded with spaces to a multiple of 8,
    then the tensors back to back. Tensors are ordered widest dtype first (as the safetensors
    library does) so every tensor starts aligned to its element size."""
    tensors = sorted(tensors, key=lambda t: (-_DTYPE_SIZE[t[1]], t[0]))
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, dtype, shape in tensors:
        n = _nbytes(dtype, shape)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + n]}
        offset += n
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    # SHAKE-256 as a stream generator: deterministic forever (unlike `random`), and fast.
    data = hashlib.shake_256(seed_label.encode()).digest(offset)
    _atomic_write(path, struct.pack("<Q", len(blob)) + blob + data)
    return offset


def _atomic_write(path: Path, data: bytes) -> None:
    # Temp name then rename: a server scanning the dir never sees a half-written file.
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _write_json(path: Path, obj) -> None:
    _atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def make_checkpoint(dir: str | os.PathLike, *, shards: int = 4, shard_bytes: int = 8 * 2**20,
                    seed: int = 0) -> dict:
    """Write the synthetic checkpoint into `dir` and return its manifest (see `scan`).

    Same (shards, shard_bytes, seed) -> byte-identical files, so hashes can be asserted.
    `shard_bytes` is approximate (within a few KB). Shards left over from an earlier call
    with more shards are removed, so the directory holds exactly one checkpoint.
    """
    if not 1 <= shards <= NUM_LAYERS:
        raise ValueError(f"shards must be 1..{NUM_LAYERS}, got {shards}")
    if shard_bytes < 1024:
        raise ValueError(f"shard_bytes must be at least 1024, got {shard_bytes}")
    root = Path(dir)
    root.mkdir(parents=True, exist_ok=True)

    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    for old in root.glob("model-*-of-*.safetensors"):
        if old.name not in names:
            old.unlink()

    weight_map: dict[str, str] = {}
    total = 0
    for i, name in enumerate(names):
        tensors = _shard_tensors(i, shards, shard_bytes)
        total += _write_safetensors(root / name, tensors, f"glmfleet-hub-double/{seed}/{name}")
        weight_map.update({t[0]: name for t in tensors})
    _write_json(root / "model.safetensors.index.json",
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))})

    _write_json(root / "config.json", {
        "_synthetic_test_checkpoint": f"made by the Hub test double, seed {seed}; not real weights",
        "architectures": ["GlmMoeDsaForCausalLM"],
        "model_type": "glm_moe_dsa",
        "num_hidden_layers": NUM_LAYERS,
        "num_nextn_predict_layers": 1,
        "first_k_dense_replace": FIRST_DENSE,
        "hidden_size": 6144,
        "num_attention_heads": 64,
        "vocab_size": 154880,
        "max_position_embeddings": 202752,
        "index_topk": 2048,
        "indexer_types": indexer_types(),
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "modelopt", "quant_algo": "NVFP4"},
    })
    _write_json(root / "generation_config.json", {
        "bos_token_id": 0, "eos_token_id": [1, 2], "pad_token_id": 3,
        "do_sample": True, "temperature": 1.0, "top_p": 0.95,
    })
    _write_json(root / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 202752,
        "bos_token": "<s>", "eos_token": "</s>",
    })
    _atomic_write(root / "README.md", (
        "---\nlibrary_name: transformers\npipeline_tag: text-generation\n---\n"
        "# Synthetic GLM-like checkpoint (test double)\n\n"
        "Generated by testbed/doubles/hub/checkpoint.py for tests. The file names and config\n"
        f"keys mimic the real checkpoint; the tensors are pseudo-random bytes (seed {seed}).\n"
    ).encode())
    _atomic_write(root / ".gitattributes", "".join(
        f"*{s} filter=lfs diff=lfs merge=lfs -text\n" for s in LFS_SUFFIXES).encode())
    return scan(root)
