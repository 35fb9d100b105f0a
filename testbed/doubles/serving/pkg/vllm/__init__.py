"""NOT vLLM: the import path `vllm` of the serving TEST DOUBLE (testbed/doubles/serving).

With pkg/ on PYTHONPATH, `python -m vllm.entrypoints.cli.main serve ...` (what the kit's
serve.sh execs) runs the fake vLLM server instead of the real one.
"""
