# The commands that matter: `make demo`, `make lint` and `make test`. Each creates or refreshes the
# virtualenv in .venv (only when setup.py changed) and installs the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

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
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q --durations=25 $(PYTEST_ARGS) tests

test-fast: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

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
