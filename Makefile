# The commands that matter: `make demo`, `make lint` and `make test`. Each creates or refreshes the
# virtualenv in .venv (only when setup.py changed) and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=
# Test processes (pytest-xdist), one test file per process at a time (--dist loadfile keeps a
# file's module fixtures in one process). 2 matches CI's 2 cores: the suite took 24 min 48 s in
# one process and 14 min 44 s in two (docs/RESULTS.md, "Test suite time"). 0: one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)

.PHONY: venv lint test test-fast demo bench bench-peers clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# ruff (configured in pyproject.toml): pyflakes, pycodestyle at 100 columns, import order.
lint: $(STAMP)
	$(PY) -m ruff check .

# Full suite, slow tests included (CI runs this), with the 25 slowest tests listed (the suite's
# time budget is ~15 min on 2 cores). pytest exits 5 when no test ran: that fails too.
test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q --durations=25 $(XDIST) $(PYTEST_ARGS) tests

test-fast: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS) tests

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m qrec_tf.demo --output $(DEMO_DIR)

bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m benchmarks.pipeline_throughput
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m benchmarks.vocab_scaling
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m benchmarks.serving_latency

# Our din against DeepCTR's DIN on the same TFRecords (benchmarks/peers.py); installs DeepCTR into
# its own venv, bench_out/peers_venv, once.
bench-peers: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m benchmarks.peers

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench_out .pytest_cache
