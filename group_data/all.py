# Every knob of the deploy, with its default and what it means: the one source of truth.
# Override per host in the inventory, per group in group_data/<group>.py, or per run with
# `--data key=value`. Settings are validated (glmfleet/settings.py) before any connection;
# an unknown key is an error, so a typo is never silently ignored.

# --- Run mode -------------------------------------------------------------------------------
preflight_only = False  # gather facts, check, print the readiness report; change nothing
preflight_report = "preflight-report.json"  # where (on the controller) the JSON report goes; "" = none
prometheus_targets = "prometheus-targets.json"  # controller file: Prometheus file_sd targets (vLLM + HAProxy metrics) written by the deploy; "" = none

# --- Model and weights ----------------------------------------------------------------------
model_repo = "0xSero/GLM-5.2-NVFP4-REAP-469B"  # Hugging Face repo of the checkpoint
model_revision = None  # REQUIRED for a full deploy: the 40-hex commit to pin (never a branch)
weights_dir = "/mnt/llm_models/GLM-5.2-NVFP4-REAP-469B"  # where the weights live on the host
hf_cache_dir = "/root/.cache/huggingface"  # host's Hugging Face cache, mounted at the container's /root/.cache/huggingface
hf_endpoint = None  # Hub mirror URL (HF_ENDPOINT); None = huggingface.co
hf_token_file = None  # controller-side file holding the HF token; else $HF_TOKEN; None = anonymous

# --- Container and service ------------------------------------------------------------------
image = "voipmonitor/vllm:black-benediction-b12xpr11-vllmbb6c5b7-b12xd90d89c-fi3395b41aa8d-dg324aced12c-cu132-20260608"  # noqa: E501  the b12x vLLM image (only one with SM120 sparse MLA)
image_cuda_version = "13.2"  # CUDA userspace of the image: the host driver must support it
service_dir = "/opt/glm52"  # where the box kit (compose, .env, scripts) is placed on the host
service_name = "glm52-vllm"  # compose service / container name
port = 8000  # HTTP port of the OpenAI-compatible API
bind_address = "0.0.0.0"  # address the API listens on (127.0.0.1 = loopback only)
api_key = None  # API key the server demands (Bearer); None = keep the key each host has (a host with none is refused); "generate" = one random key per fleet, kept in api_key_file; "open" = no key: anyone who reaches the port may use the API
api_key_file = ".secrets/api-key"  # controller file (0600, relative = from where pyinfra runs) holding the generated key; never printed
served_model_name = "glm-5.2"  # primary model name in the API (aliases below are always added)
served_model_aliases = ["GLM-5.2-NVFP4-REAP-469B", "GLM-5.2"]  # extra names clients may use
enable_thinking = True  # reasoning on (glm45 parser); False = direct answers, no-think template
reasoning_effort = "high"  # chat-template default for thinking (a client's own value wins); None = the template's "max"
shm_size = "32gb"  # container /dev/shm (the recipe's value; ipc: host shares the host's too)
omp_num_threads = 16  # OMP_NUM_THREADS inside the container

# --- vLLM sizing (the recipe's validated values) --------------------------------------------
tensor_parallel_size = 4  # one shard per GPU
decode_context_parallel_size = 4  # DCP: shards the MLA KV cache across GPUs (4 = 250k context)
max_model_len = 250000  # context length; DCP 1 tops out near 131k (OOM above ~177k)
max_num_seqs = 2  # concurrent sequences (also sizes the CUDA-graph capture)
max_num_batched_tokens = 8192  # prefill chunk size
gpu_memory_utilization = 0.95  # share of each GPU's memory vLLM may take
mtp_enabled = True  # MTP speculative decoding (the checkpoint's own draft layer)
num_speculative_tokens = 3  # MTP draft tokens per step
index_topk_pattern = None  # 78-char F/S override; None = derive from config.json indexer_types

# --- GPU and host requirements (preflight) --------------------------------------------------
gpu_count = 4  # exactly this many GPUs must be visible through NVML
gpu_compute_capability = "12.0"  # required compute capability (RTX PRO 6000 Blackwell = 12.0)
gpu_min_memory_gib = 95.0  # per GPU, as NVML reports it (a "96 GB" card shows ~95.6 GiB)
gpu_require_open_kernel_module = True  # Blackwell needs NVIDIA's open kernel modules
disk_margin_gib = 20.0  # free space required on top of the weights still to download
min_shm_gib = 16.0  # host /dev/shm below this is a WARN (ipc: host uses the host's)
supported_os = ["ubuntu 22.04", "ubuntu 24.04", "debian 12", "debian 13"]  # "<id> <version>" accepted

# --- Rollout and timeouts -------------------------------------------------------------------
rollout_batch_size = 2  # hosts changed at once after the canary
ready_timeout_s = 1800  # wait for the API to answer (first boot compiles kernels, ~6 min)
smoke_timeout_s = 300  # one smoke-test chat completion

# --- Docker and NVIDIA Container Toolkit ------------------------------------------------------
docker_packages = "docker-ce"  # "docker-ce": Docker's apt repo; "distro": the distribution's docker.io + its compose
docker_version = None  # pin docker-ce + docker-ce-cli (distro: docker.io) to this apt version; None = newest
docker_remove_conflicts = False  # remove packages in the way (docker.io, podman-docker, ...); False = FAIL the host
docker_repo_url = None  # Docker apt repo or mirror; None = https://download.docker.com/linux/<ubuntu or debian>
docker_key_url = None  # Docker's signing key; None = <docker_repo_url>/gpg
docker_key_fingerprint = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"  # pinned: a downloaded key must match
nvidia_repo_url = "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH)"  # toolkit repo or mirror
nvidia_key_url = "https://nvidia.github.io/libnvidia-container/gpgkey"  # NVIDIA's signing key
nvidia_key_fingerprint = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"  # pinned: a downloaded key must match
nvidia_toolkit_version = None  # pin all four toolkit packages, e.g. "1.17.8-1"; None = newest
nvidia_cdi = "auto"  # CDI spec: "auto" = toolkit >= 1.18 and an NVIDIA driver present; "on"; "off"
apt_proxy = None  # proxy for all apt traffic on the hosts, e.g. "http://proxy:3142"; None = apt as it is
docker_log_max_size = "100m"  # container log rotation (the recipe's): added to daemon.json (operator's own values win there) and set on the service container
docker_log_max_file = 5  # container log files kept per container (the recipe's 5), in daemon.json and on the service container
gpu_check_image = "ubuntu:24.04"  # image for the `docker run --gpus all ... nvidia-smi -L` check (pulled, said so, when missing); None = skip
registry_mirror = None  # Docker Hub mirror, written first in daemon.json's registry-mirrors (Docker uses it for Docker Hub names only); None = the inventory's image_cache host when there is one, else daemon.json's registry-mirrors left as they are
gpu_check_always = False  # False: the GPU container check runs again only when dockerd, the toolkit or gpu_check_image changed since it last ran; True: on every deploy

# --- Weights --------------------------------------------------------------------------------
weights_tool_dir = "/opt/glmfleet"  # host dir for the weights tool (bin/weights.pyz), its shipped Python packages (pylib/) and the HF token while a download starts (secrets/, 0700)
weights_parallel_downloads = 8  # files one host fetches at once
weights_rehash = False  # true: read and hash every byte again on this run (finds bit rot); false: an unchanged file costs one stat
weights_fanout = False  # true: one host per checkpoint fetches from the Hub, the others get its verified files over the site network (weights_fanout_via) and verify them
weights_fanout_via = "peers"  # "peers": hosts holding verified weights serve them to the others (aria2, all sources at once; no byte through the controller); "controller": copies relayed over SSH through the controller (fallback when hosts cannot reach each other)
weights_peer_port = 7480  # port a host serves its verified weights on to the other hosts (at site_address) while the weights stage needs them
weights_wheel_dir = None  # controller dir of wheels for the hosts' Python packages (air-gapped sites: `python -m glmfleet.weights.hostbundle download`); None = a package index, else the controller's own packages when they fit the host
weights_progress_interval_s = 30  # seconds between progress lines (bytes, rate, ETA) per host while a download runs
weights_wait_timeout_s = 0  # stop waiting after this many seconds (the download goes on detached; a re-run attaches); 0 = until done

# --- Service --------------------------------------------------------------------------------
jit_cache_seed = True  # rollout: after the canary's first boot, its kernel/JIT cache volume goes host to host to the hosts with the same image, GPU model, driver and flags, so they boot warm; False = each host compiles its own
jit_cache_seed_port = 7481  # port the canary serves its JIT cache archive on (at site_address) to the hosts it seeds, during the rollout only
status_harness = None  # tasks/status.py: also run the coherence harness ("core" or "long") from the controller against every endpoint; None = status only

# --- Gateway (hosts of the `gateway` inventory group: HAProxy in front of the fleet) ---------
gateway_port = 8080  # the fleet's one OpenAI-compatible endpoint on each gateway host
gateway_tls_cert = None  # PEM file (certificate + key) on the gateway host: HTTPS on gateway_port; None = plain HTTP
gateway_stats_port = 8404  # gateway's HAProxy metrics (/metrics, Prometheus) and stats page (/stats)
gateway_timeout_s = 900  # idle limit on a client or server connection: covers a long non-streamed generation (OpenAI client waits 600 s)
gateway_drain_timeout_s = 600  # rollout: wait at most this long for a drained host's in-flight requests before restarting it
site_address = None  # address the other hosts of the site reach this host at (the gateway for its API, fan-out peers for its weights, GPU hosts for its image cache); None = its SSH hostname

# --- Image cache (hosts of the `image_cache` inventory group: the site's copy of the image; no GPU stage there)
image_cache_port = 5000  # the cache's registry port at site_address (plain HTTP, read-only): every GPU host's default registry_mirror
image_cache_upstream = "docker.io"  # registry the cache copies the image from (host[:port]); Docker Hub, as registry-mirrors apply to Docker Hub names only
