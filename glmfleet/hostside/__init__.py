"""Scripts that run ON a host (copied there by the deploy, stdlib-first, python3.8+).

They are also importable here so the controller shares their pure rules (e.g. manifest.py
uses weights.py's manifest checks) and tests can call them directly.
"""
