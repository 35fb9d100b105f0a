"""Stage 'weights': the checkpoint on each host, downloaded and hash-checked.

manifest.py (the Hub's listing at the pinned commit), plan.py (pure decisions and the host
commands), ops.py (pyinfra operations), hostbundle.py (the Python packages shipped for the
download), hostside/ (the tool that runs ON the host, shipped as one zip application).
"""
