# Two commands do all the set-up on a fresh machine:
#   make serve   start the backend on :9090 (embedded defaults: CPU, no Redis)
#   make test    install everything the tests need (Python packages, redis-server, postgresql,
#                Label Studio 1.23.2 in .cache/ls-venv) and run every test
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
HOST   ?= 0.0.0.0
PORT   ?= 9090
PYTEST_ARGS ?=

.PHONY: serve test test-fast deps system-deps bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# torch first and exactly: a CPU build is on the machine; anything looser pulls CUDA wheels
	$(BIN)/pip install -q "torch==2.13.0"
	$(BIN)/pip install -q -e ".[test]"
	touch $@

deps: $(STAMP)

system-deps:
	@bash scripts/install_system_deps.sh

serve: $(STAMP)
	$(BIN)/ml-backend serve --host $(HOST) --port $(PORT)

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not e2e and not integration and not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run_all

clean:
	rm -rf $(VENV) .pytest_cache

# The container images built and started for real, without a Docker daemon (root, Debian; minutes):
# podman + debootstrap, a Debian bookworm base, docker/Dockerfile built and its command checked over
# HTTP, docker/Dockerfile.gpu built. Caches in .cache/container/. See README "Containers".
.PHONY: container-check
container-check:
	bash scripts/container_check.sh
