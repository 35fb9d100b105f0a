"""TEST DOUBLE of the Hugging Face Hub: a local HF_ENDPOINT serving a synthetic checkpoint.

Not the real Hub. It stands in for huggingface.co at the edge of the tests so the real
huggingface_hub client (snapshot_download, `hf cache verify`, model_info, ...) runs for real
against small safetensors shards with real hashes, and so faults (slow, cut, corrupted,
5xx responses) can be injected. See README.md in this directory.

    from testbed.doubles.hub import HubDouble, make_checkpoint
    manifest = make_checkpoint(tmp / "repo", shards=3, shard_bytes=2 << 20)
    with HubDouble(tmp / "repo") as hub:
        env["HF_ENDPOINT"] = hub.url          # in the *child's* environment
        hub.set_faults(corrupt={"model-00001-of-00003.safetensors": 100})
        hub.stats()["files"]["config.json"]["complete"]
"""

from .checkpoint import INDEX_PATTERN, make_checkpoint, scan
from .server import DEFAULT_REPO_ID, DEFAULT_REVISION, HubDouble

__all__ = ["HubDouble", "make_checkpoint", "scan", "DEFAULT_REPO_ID", "DEFAULT_REVISION",
           "INDEX_PATTERN"]
