# TEST DOUBLE of the serving image's /etc/profile.d script (installed by image.py; the kit
# tests' compose double gives its "container" the same file as a login profile). Only a login
# shell reads it, as only a login shell reads the real image's profile scripts.
# The fake vLLM refuses to boot without this mark when it runs as the image (FAKE_VLLM_IMAGE=1).
export FAKE_VLLM_PROFILE=loaded
# Variables the recipe unsets before starting vLLM: the kit must undo them after the profile.
export NCCL_GRAPH_FILE=/opt/fake-vllm/nccl-graph.xml
export NCCL_GRAPH_DUMP_FILE=/tmp/nccl-graph-dump.xml
export VLLM_B12X_MLA_EXTEND_MAX_CHUNKS=8
