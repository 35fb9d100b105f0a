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
The stage itself: glmfleet.weights.sync (a pyinfra deploy; this file only calls it).
"""

from glmfleet import weights

weights.sync()
