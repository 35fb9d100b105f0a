"""Stage 'weights': the checkpoint on every host, verified against the Hub's hashes.

Host side: glmfleet/weights/hostside/ (verify / download / status; detached jobs with a lock, a
state file and a log), shipped as one zip application. Controller side: glmfleet/weights/ops.py.
On the host:

    <weights_tool_dir>/bin/weights.pyz       the host-side tool (run as `python3 weights.pyz ...`)
    <weights_tool_dir>/pylib/<digest>/       huggingface_hub, hf_xet & co., wheels chosen for the host's
                                              python3 (glmfleet/weights/hostbundle.py), via PYTHONPATH
    <weights_tool_dir>/secrets/hf-token      the HF token, 0600 in a 0700 dir, only while a
                                              download starts
    <weights_dir>/.glmfleet/manifest.json    the Hub's file list at model_revision
    <weights_dir>/.glmfleet/{VERIFIED,verify.json,state.json,hash-cache.json,weights.log}

A re-run on intact weights is a stat per file and no change; a running download is attached
to; a killed one resumes with the files it had finished. weights_fanout: one host per
checkpoint fetches from the Hub, the others fetch from the hosts that hold verified copies
(weights_fanout_via="peers": host to host with aria2, the controller carries no weight
bytes; "controller": relayed over SSH) and hash every file.
"""

from pyinfra import host, state

from glmfleet import runctx
from glmfleet.weights import ops


def run() -> None:
    s = runctx.settings()
    manifest, error = ops.manifest_for_run(state, s)
    if manifest is None and error is not None:  # the Hub is unreachable: what preflight kept
        manifest = ops.held_manifest_for(state, host.name)
    if manifest is None:
        reason = str(error) if error else "model_revision is not set: nothing to download"
        ops.fail(f"no manifest for {s.model_repo}@{s.model_revision}: {reason}",
                 name="Weights: manifest")
        return
    ops.tool_and_manifest(s, manifest, name="Weights: weights.pyz and the manifest")
    ops.check_and_packages(s, manifest, name="Weights: stat-only check (+ Python packages if needed)")
    peers = s.weights_fanout and s.weights_fanout_via == "peers"
    if peers:
        ops.peer_tools(s, manifest, name="Weights: fan-out: aria2 on the hosts that fetch")
    ops.fetch(s, manifest, name="Weights: download and verify (detached on the host)")
    if peers:
        ops.peers_serve(s, manifest, name="Weights: fan-out: verified hosts serve the others")
        ops.peers_receive(s, manifest, name="Weights: fan-out: fetch from the hosts, verify, serve")
        ops.peers_stop(s, manifest, name="Weights: fan-out: stop serving")
    elif s.weights_fanout:
        ops.fanout_push(s, manifest, name="Weights: fan-out: copy from the verified host")
        ops.fanout_receive(s, manifest, name="Weights: fan-out: verify the copies")


run()
