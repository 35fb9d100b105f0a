"""Stage 'service': the box kit placed, the service started, smoke-tested and rolled out.

plan.py (pure decisions), ops.py (kit placement and the gated rollout), status.py (the
read-only status mode), monitor.py (supervision of the kit's monitor.sh), apikey.py (the
fleet's API key), kit_by_hand.py (render the kit without pyinfra).
"""
