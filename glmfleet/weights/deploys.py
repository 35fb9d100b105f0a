"""The weights stage as a pyinfra deploy: called by tasks/weights.py or a deploy file of one's
own (README: "Use a stage in your own deploy")."""

from pyinfra import host
from pyinfra.api import deploy

from glmfleet import runctx
from glmfleet.weights import ops


@deploy("weights.sync")
def sync(settings=None) -> None:
    """The checkpoint at model_revision on the host, verified against the Hub's hashes
    (downloaded, or with weights_fanout fetched from the hosts that hold verified copies:
    host to host with aria2, or relayed through the controller). settings: a Settings,
    a mapping over the host's data and the defaults, or None."""
    s = runctx.stage_settings(settings)
    manifest, error = ops.manifest_for_run(host.state, s)
    if manifest is None and error is not None:  # the Hub is unreachable: what preflight kept
        manifest = ops.held_manifest_for(host.state, host.name)
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
