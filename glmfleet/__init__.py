"""glmfleet: facts, operations and pure logic for deploying GLM-5.2 NVFP4 under vLLM.

Pure modules (no pyinfra import): settings, index_pattern, recipe, checks, report.
pyinfra-facing modules: facts/ and ops/. Host-side helpers: hostside/.
"""
