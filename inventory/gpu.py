# Example fleet: two GPU servers. Copy this file, list your own hosts, then run
#   pyinfra inventory/gpu.py deploy.py --data preflight_only=true   (check, change nothing)
#   pyinfra inventory/gpu.py deploy.py                               (deploy)
#
# Each entry is (name, data). The name is what pyinfra prints; the data holds how to reach
# the host (ssh_*) and any per-host override of a setting from group_data/all.py (the one
# place every setting and its default are listed). Unknown keys are refused, so a typo
# fails loudly before any connection.
gpu = [
    (
        "gpu-01",
        {
            "ssh_hostname": "10.0.0.11",  # address or DNS name the controller reaches by SSH
            "ssh_user": "ubuntu",  # login user; it needs sudo (pass --sudo) or be root
            "ssh_key": "~/.ssh/id_ed25519",  # private key for that user
        },
    ),
    (
        "gpu-02",
        {
            "ssh_hostname": "10.0.0.12",
            "ssh_user": "ubuntu",
            "ssh_key": "~/.ssh/id_ed25519",
            # A per-host override: this box keeps its weights on another disk.
            "weights_dir": "/data/llm_models/GLM-5.2-NVFP4-REAP-469B",
        },
    ),
]
