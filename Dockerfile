# gsm8k-grpo on top of the official SGLang runtime image (SGLang 0.5.17, CUDA 12.9, torch preinstalled).
#
# Build and run (a host with the NVIDIA Container Toolkit):
#
#   docker build -t gsm8k-grpo .
#   docker run --gpus all --ipc=host --shm-size=16g gsm8k-grpo doctor --preset 1hour
#   docker run --gpus all --ipc=host --shm-size=16g \
#       -v $PWD/runs:/runs -v $PWD/wandb:/runs/wandb:ro \
#       gsm8k-grpo train --preset 1hour
#
# - The working directory is /runs. output_dir defaults to ./runs, so with the command above a run
#   lands in $PWD/runs/runs/1hour/trial0 on the host; add `--set output_dir=.` to get
#   $PWD/runs/1hour/trial0 instead.
# - --ipc=host lets CUDA IPC weight sync work between the trainer and the SGLang child process;
#   --shm-size=16g replaces Docker's 64 MB /dev/shm (disk sync and NCCL use it).
# - W&B (optional, never required): the key is read from WANDB_API_KEY, or else from the file
#   wandb/.wandb_api_key under the working directory, i.e. /runs/wandb/.wandb_api_key, which the
#   read-only mount of ./wandb above provides. No key is baked into the image; with none, W&B is off
#   and the run still writes metrics.jsonl and train.log. W&B's own files go to RUN_DIR/wandb.
# - Hub downloads (the model, openai/gsm8k) are cached under /runs/.cache/huggingface, and SGLang's
#   compiled Triton kernels under /runs/.cache/triton, so both survive the container when /runs is
#   mounted. On an H100 the first server start on a machine spent 70-80 s more than later ones
#   compiling kernels (bench/results/2026-11-27-h100x4-scaling.md); that the Triton cache holds
#   all of it is likely (Triton attention backend) but was not isolated.
# - Several GPUs: see docs/multi-gpu.md. What was and was not verified about this image:
#   docs/docker.md (in short: linted and the install line tested, never built here).
#
# Base image tag: lmsysorg/sglang publishes vX.Y.Z[-cu129|-cu130][-runtime]; "-runtime" is the
# smaller image without the development tools. v0.5.17-cu129-runtime is named by several public
# projects (one reports `pip show sglang` = 0.5.17 inside it), but it was not pulled from here and
# is not pinned by digest. Our GPU test machine runs SGLang 0.5.17 with torch 2.11+cu130 (driver
# 580); on such hosts --build-arg SGLANG_IMAGE=lmsysorg/sglang:v0.5.17-cu130-runtime is the closer
# match (that tag follows the same naming but is unverified for 0.5.17).
ARG SGLANG_IMAGE=lmsysorg/sglang:v0.5.17-cu129-runtime
FROM ${SGLANG_IMAGE}

LABEL org.opencontainers.image.title="gsm8k-grpo" \
      org.opencontainers.image.description="GRPO fine-tuning of small LLMs on GSM8K (SGLang rollouts, FSDP2 trainer)" \
      org.opencontainers.image.licenses="Apache-2.0"

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV PYTHONUNBUFFERED=1 \
    HF_HOME=/runs/.cache/huggingface \
    TRITON_CACHE_DIR=/runs/.cache/triton

# Only what the wheel is built from (pyproject.toml names README.md; presets/ is force-included).
WORKDIR /opt/gsm8k-grpo
COPY pyproject.toml README.md ./
COPY presets ./presets
COPY src ./src

# SGLang, torch, triton and transformers are already in the image: pin them to the installed
# versions as constraints so that resolving our dependencies can never replace them (no torch
# reinstall). PIP_BREAK_SYSTEM_PACKAGES only matters if the image's Python is marked externally
# managed (PEP 668); pip ignores it otherwise.
RUN python3 -c "import sglang, torch; print('sglang', sglang.__version__, '| torch', torch.__version__)" \
 && python3 -m pip list --format=freeze \
      | grep -iE '^(torch|sglang|sgl[-_]kernel|triton|transformers|flashinfer[-_]python)==' > /tmp/keep.txt \
 && cat /tmp/keep.txt \
 && PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir -c /tmp/keep.txt . \
 && rm -f /tmp/keep.txt \
 && grpo --version

WORKDIR /runs

ENTRYPOINT ["grpo"]
CMD ["--help"]
