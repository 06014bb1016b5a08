# nlhf_jax developer commands. `make demo` and `make test` set themselves up on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.install.stamp
# Eight fake CPU devices so that every sharded code path runs on a laptop or CI machine.
FAKE_DEVICES := XLA_FLAGS=--xla_force_host_platform_device_count=8
WORKDIR ?= runs/demo

.PHONY: install test demo findings bench bench-gpu lint clean

install: $(STAMP)

$(STAMP): requirements.lock requirements-compilers.lock setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.lock
	$(PY) -m pip install -q --no-deps -e .
	# The TPU and NVIDIA compilers for nlhf-compile, in a folder of their own (off sys.path for every other command).
	$(PY) -m pip install -q --no-deps --upgrade --target $(VENV)/compilers -r requirements-compilers.lock
	touch $(STAMP)

# Two pytest workers, test files shared out between them: most tests are compile-bound (one core each).
# PYTEST_WORKERS=0 runs every test in this process.
PYTEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile tests

# The whole pipeline (tokenizer, SFT, pairs, judges, eight policies, evaluation) on CPU; re-running resumes.
demo: install
	$(FAKE_DEVICES) $(PY) -m nlhf_jax.cli.pipeline --config=experiments/configs/pipeline.py:demo --workdir=$(WORKDIR)

# The demo with seeds 0, 1, 2 and the paper's claims checked per seed and pooled; re-running resumes.
FINDINGS_DIR ?= runs/findings
findings: install
	$(FAKE_DEVICES) $(PY) -m nlhf_jax.cli.pipeline --config=experiments/configs/pipeline.py:demo \
	  --workdir=$(FINDINGS_DIR) --config.seeds=0,1,2
	@echo "findings: $(FINDINGS_DIR)/eval/findings.md"

# Speed and memory figures (printed, never asserted).
bench: install
	$(PY) -m nlhf_jax.cli.bench
	$(PY) -m nlhf_jax.cli.sampling_bench --compute_dtypes=float32,bfloat16
	$(PY) -m nlhf_jax.cli.online_bench
	$(PY) -m nlhf_jax.cli.tabular_bench

# On one GPU (or TPU) host, under 8 minutes: the 1b step's MFU, pair sampling against the bandwidth bound, peak
# memory (docs/benchmark.md). The lock file's jax is the CPU build: install the accelerator's first, e.g.
# .venv/bin/pip install 'jax[cuda12]==0.10.2' (the locked version). BENCH_GPU_FLAGS=--allow_cpu --preset=tiny tries it here.
bench-gpu: install
	$(PY) -m nlhf_jax.cli.accelerator_bench --json $(BENCH_GPU_FLAGS)

lint: install
	$(PY) -m compileall -q nlhf_jax experiments tests
	$(PY) -m pyflakes nlhf_jax experiments tests

clean:
	rm -rf $(VENV) runs *.egg-info
