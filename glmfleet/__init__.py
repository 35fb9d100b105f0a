"""glmfleet: deploy GLM-5.2 NVFP4 under vLLM on a fleet of GPU hosts with pyinfra.

One folder per stage, each split the same way (facts gather, plan.py decides, ops.py
changes): preflight/, docker/ (Docker and the NVIDIA toolkit), weights/, service/.
kit/ renders the box kit. Shared by every stage: settings, runctx (glue with pyinfra; it
imports no stage), report, upload, remote (a stage's own commands, with the run's sudo).
"""
