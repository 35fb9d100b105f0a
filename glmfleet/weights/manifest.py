"""The weights manifest: what the Hub says the checkpoint is, at the pinned commit.

Controller side. `fetch_manifest` asks the Hub (through huggingface_hub, never hand-written
HTTP) for every file of the repo with its size and expected hash; the rest is pure logic:
comparing a manifest with what a host reports, the bytes a host still has to download (for
the disk-space preflight), and (de)serialisation. The host checks the same JSON with its
tool, whose glmfleet/weights/hostside/common.py also owns the rules both sides share (manifest
validation, which hash a file is checked by, how Hub errors are explained), so the two never
disagree.

Manifest (JSON):
    {"format": "glmfleet-manifest/1", "repo": "owner/name", "revision": "<40-hex commit>",
     "files": [{"path": "model-00001-of-00080.safetensors", "size": 4294967296, "lfs": true,
                "sha256": "<64 hex>", "git_sha1": null}, ...],     # sorted by path
     "total_size": <sum of sizes>}
LFS files carry the sha256 the Hub publishes; the others carry the git blob sha1 of their
content (the Hub's blob id). For an LFS file the Hub's blob id is the sha1 of the LFS
pointer, not of the content, so it is deliberately not kept: it cannot check the file.
"""

from __future__ import annotations

import json
from typing import Any, Iterable, Mapping

from glmfleet.weights.hostside.common import (MANIFEST_FORMAT, expected_hash, hub_error_message,
                                             manifest_problems)


class ManifestError(Exception):
    """Getting or reading a manifest failed. str() says what failed and what to check.

    kind: gated | auth | revision | repo | network | server | offline | hub (from the Hub),
          format (a manifest that is not valid)."""

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


# ---- from the Hub ------------------------------------------------------------------------

def fetch_manifest(repo: str, revision: str, endpoint: str | None = None,
                   token: str | None = None) -> dict:
    """The manifest of `repo` at `revision` (a commit; a branch is resolved to its commit).

    endpoint: Hub URL (a mirror), None = $HF_ENDPOINT or huggingface.co.
    token: the HF token, None = anonymous (a token stored on this machine is NOT used, so
    what the deploy sends is exactly what settings say).
    Raises ManifestError on a wrong token, unknown repo or revision, unreachable endpoint.
    """
    from huggingface_hub import HfApi  # lazy: the pure helpers below need no network stack

    api = HfApi(endpoint=endpoint)
    auth = token if token else False
    try:
        # One quick request first: it fails fast and clearly (no retries) on a wrong token,
        # an unknown revision or an unreachable endpoint, and resolves a branch to its commit.
        info = api.model_info(repo, revision=revision, token=auth)
        commit = info.sha or revision
        # The tree call pages through any number of files and retries transient errors.
        tree = list(api.list_repo_tree(repo, revision=commit, recursive=True, token=auth))
    except Exception as e:
        kind, message = hub_error_message(e, repo, revision, endpoint or api.endpoint)
        raise ManifestError(message, kind) from e
    files = [_entry(item) for item in tree if hasattr(item, "blob_id")]  # skip folders
    return build_manifest(repo, commit, files)


def head_commit(repo: str, endpoint: str | None = None, token: str | None = None,
                branch: str = "main") -> str:
    """The commit `branch` of `repo` points at now (for the operator to check and pin; the
    deploy never uses a branch by itself). Raises ManifestError as fetch_manifest does."""
    from huggingface_hub import HfApi

    try:
        return HfApi(endpoint=endpoint).model_info(repo, revision=branch, token=token or False).sha
    except Exception as e:  # huggingface_hub's and the HTTP client's own errors
        kind, message = hub_error_message(e, repo, branch, endpoint)
        raise ManifestError(message, kind) from None


def revision_hints(hosts: Mapping[str, Mapping[str, Any]], token: str | None = None) -> list[str]:
    """For the hosts whose model_revision is missing (a deploy run): the Hub's current head
    commit of their model_repo, read now, as a line telling how to pin it."""
    import os

    wanted = {(d.get("model_repo"), d.get("hf_endpoint"), d.get("hf_token_file"))
              for d in hosts.values() if d.get("model_revision") is None and not d.get("preflight_only")}
    lines = []
    for repo, endpoint, token_file in sorted(wanted, key=str):
        if not repo:
            continue
        where = endpoint or "huggingface.co"
        try:
            if token is None and token_file:
                with open(os.path.expanduser(token_file)) as f:
                    token = f.read().strip() or None
            sha = head_commit(repo, endpoint, token or os.environ.get("HF_TOKEN"))
        except OSError as e:
            lines.append(f"the head commit of {repo} was not read: hf_token_file: {e.strerror}")
            continue
        except ManifestError as e:
            lines.append(f"the head commit of {repo} could not be read from {where}: {e}")
            continue
        lines.append(f"{repo}: the Hub's current head commit (main, read now from {where}) is {sha}; "
                     f"check it is the one you want, then pin it: --data model_revision={sha} "
                     "(or in group_data/all.py); the deploy never pins it by itself")
    return lines


def _entry(item: Any) -> dict:
    lfs = getattr(item, "lfs", None)
    sha256 = None
    if lfs:  # BlobLfsInfo is a dict subclass in 2.4; read it either way
        sha256 = lfs.get("sha256") if isinstance(lfs, Mapping) else getattr(lfs, "sha256", None)
    return {"path": item.path, "size": int(item.size), "lfs": bool(lfs),
            "sha256": sha256.lower() if sha256 else None,
            "git_sha1": None if lfs else item.blob_id}


def build_manifest(repo: str, revision: str, files: Iterable[Mapping]) -> dict:
    """A validated manifest from file entries (path, size, lfs, sha256, git_sha1)."""
    entries = sorted(({"path": f["path"], "size": f["size"], "lfs": bool(f.get("lfs")),
                       "sha256": f.get("sha256"), "git_sha1": f.get("git_sha1")} for f in files),
                     key=lambda e: e["path"])
    manifest = {"format": MANIFEST_FORMAT, "repo": repo, "revision": revision, "files": entries,
                "total_size": sum(e["size"] for e in entries)}
    check_manifest(manifest)
    return manifest


def check_manifest(manifest: Any) -> None:
    problems = manifest_problems(manifest)
    if problems:
        raise ManifestError("the weights manifest is not valid: " + "; ".join(problems[:5])
                            + (f"; and {len(problems) - 5} more" if len(problems) > 5 else ""),
                            "format")


# ---- serialisation -----------------------------------------------------------------------

def dumps(manifest: dict) -> str:
    """Stable text (sorted keys, one file per line) so an unchanged manifest gives an
    identical upload and pyinfra reports no change."""
    check_manifest(manifest)
    head = {k: v for k, v in manifest.items() if k != "files"}
    lines = ",\n".join("  " + json.dumps(f, sort_keys=True) for f in manifest["files"])
    body = json.dumps(head, sort_keys=True)[:-1]
    return f'{body}, "files": [\n{lines}\n]}}\n'


def loads(text: str) -> dict:
    try:
        manifest = json.loads(text)
    except ValueError as e:
        raise ManifestError(f"the weights manifest is not JSON: {e}", "format") from None
    check_manifest(manifest)
    return manifest


def held_manifest(verified: str | None, text: str | None, repo: str, revision: str | None) -> dict | None:
    """The manifest a host already holds, when its weights were verified for exactly the
    pinned repo and revision against it (what preflight and the weights stage fall back to
    when the Hub cannot be reached); else None."""
    if not revision or verified != revision or not text:
        return None
    try:
        manifest = loads(text)
    except ManifestError:
        return None
    return manifest if (manifest["repo"], manifest["revision"]) == (repo, revision) else None


# ---- comparisons -------------------------------------------------------------------------

def _local_hash(local: Mapping, algo: str) -> str | None:
    value = local.get(algo)
    return value if isinstance(value, str) else None


def diff_manifest(manifest: dict, local_state: Mapping[str, Mapping]) -> dict:
    """Compare the manifest with what a host has.

    local_state: {path: {"size": int, "sha256"?: str, "git_sha1"?: str}}, e.g. the "files" of
    a host's hash cache or a scan of a directory.
    Returns sorted path lists:
      missing     in the manifest, not on the host
      extra       on the host, not in the manifest
      changed     wrong size, or a known hash that differs from the manifest's
      unverified  right size but no hash known for it (needs a hash check, not a download)
      ok          the expected hash is known and matches
    """
    out = {"missing": [], "extra": [], "changed": [], "unverified": [], "ok": []}
    expected = {f["path"]: f for f in manifest["files"]}
    for path, entry in expected.items():
        local = local_state.get(path)
        if local is None:
            out["missing"].append(path)
            continue
        algo, want = expected_hash(entry)
        have = _local_hash(local, algo)
        size = local.get("size")
        if size is None and isinstance(local.get("identity"), list):
            size = local["identity"][0]  # hash-cache entries keep the size in their identity
        if size is not None and size != entry["size"]:
            out["changed"].append(path)
        elif have is None:
            out["unverified"].append(path)
        elif have == want:
            out["ok"].append(path)
        else:
            out["changed"].append(path)
    out["extra"] = [p for p in local_state if p not in expected]
    return {k: sorted(v) for k, v in out.items()}
