"""Stages 'docker' and 'nvidia_toolkit': Docker Engine and the NVIDIA Container Toolkit.

facts.py gathers (read-only commands), plan.py decides (pure), ops.py changes the host.
"""
