# Chorus: every target runs from a fresh clone; `make setup` is implied where needed.
VENV ?= .venv
PY := $(VENV)/bin/python
PROTO_SRC := $(wildcard protos/chorus/v1/*.proto)
# protoc finds its plugins (protoc-gen-mypy) on PATH.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup test test-fast demo lint format protos protos-check nats-users bench gpu-check chaos clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[executor,dev]'
	touch $@

setup: $(VENV)/.installed

protos: setup
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --grpc_python_out=protos \
		--mypy_out=protos --mypy_grpc_out=protos $(PROTO_SRC)

# Fails when the committed generated code differs from what `make protos` makes.
protos-check: setup
	@tmp=$$(mktemp -d) && \
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=$$tmp --grpc_python_out=$$tmp \
		--mypy_out=$$tmp --mypy_grpc_out=$$tmp $(PROTO_SRC) && \
	for f in $$(cd $$tmp && find . -type f); do \
		cmp -s $$tmp/$$f protos/$$f || { echo "stale generated code: protos/$$f (run make protos)"; exit 1; }; \
	done && echo "generated protobuf code is up to date"

# deploy/nats/users.yaml from services/common/roles.py and the executor Deployments.
nats-users: setup
	$(PY) deploy/nats/render_users.py

lint: setup protos-check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy services tests bench

format: setup
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: setup
	$(VENV)/bin/pytest

test-fast: setup
	$(VENV)/bin/pytest -m "not slow and not fault and not browser"

demo: setup
	$(PY) -m services.cli.demo

bench: setup
	$(PY) -m bench.pipeline
	$(PY) -m bench.bus_floor
	$(PY) -m bench.capacity
	$(PY) -m bench.taskbench_rules
	$(PY) -m bench.planner_robustness
	$(PY) -m bench.planner_latency
	$(PY) -m bench.planner_prompt_tokens
	$(PY) -m bench.selector
	$(PY) -m bench.responder
	$(PY) -m bench.executor
	$(PY) -m bench.annotators
	$(PY) -m bench.language
	$(PY) -m bench.gateway
	$(PY) -m bench.security

# The executor's backends on cuda:0 in float16 against the CPU (needs a CUDA device; no NATS,
# no download): bench/results/gpu.json.
gpu-check: setup
	$(PY) -m bench.gpu_check

# Requests while services, the NATS server or a cluster node are killed (bench/chaos.py).
chaos: setup
	$(PY) -m bench.chaos

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build *.egg-info
