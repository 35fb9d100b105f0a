"""The weights tool that runs ON a host (stdlib only; python3.8+). It reaches the host as one
file, a zip application (glmfleet/weights/toolapp.py); cli.py says how it is used."""
