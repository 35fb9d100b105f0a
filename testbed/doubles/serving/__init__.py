"""TEST DOUBLE of the vLLM serving image: an OpenAI-compatible stand-in (see fake_vllm.py)."""
