# The two commands of the README: `make demo` and `make test`. Both create .venv when it is missing
# and (re)install the project into it whenever pyproject.toml changes.
PYTHON_SYSTEM ?= python3
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: install demo demo-local test test-slow lint bench bench-service gpu-check gpu-wheels deploy-smoke clean

$(STAMP): pyproject.toml
	@test -x $(PYTHON) || $(PYTHON_SYSTEM) -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $(STAMP)

$(BENCH_STAMP): $(STAMP)
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev,bench]'
	@touch $(BENCH_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PYTHON) -m services.demo

demo-local: $(STAMP)
	$(PYTHON) -m trainer.demo

test: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m pytest -m "not fault" --durations=15

# Fault injection: a Ray head killed mid-run, a Ray Train worker killed, a database cut for 30 s
# (several minutes on 2 cores).
test-slow: $(STAMP)
	$(PYTHON) -m pytest -m fault

lint: $(STAMP)
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check .

bench: $(BENCH_STAMP)
	$(PYTHON) -m bench.augment_throughput
	$(PYTHON) -m bench.train_step
	$(PYTHON) -m bench.step_memory

bench-service: $(STAMP)
	$(PYTHON) -m bench.service_latency

# The GPU readiness check on a machine with a CUDA GPU (docs/benchmarks.md, "GPU readiness"):
# figures and failures into gpu-check/ (or $$OUT), a one-line summary last.
gpu-check: $(BENCH_STAMP)
	$(PYTHON) -m bench.gpu_check

# The wheels the lent H200 machine lacks (pydantic, lightly), at the versions installed here.
gpu-wheels: $(BENCH_STAMP)
	PYTHON=$(PYTHON) bash bench/gpu_wheels.sh

# The compose topology started for real with podman, checked through the API, torn down
# (deploy/README.md, "What was run here"; root, about 10 minutes).
deploy-smoke:
	bash deploy/smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache runs .simclr
