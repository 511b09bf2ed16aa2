# The two commands that matter: `make demo` and `make test`. Both create or refresh the
# virtualenv in .venv (only when setup.py changed) and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_out
PYTEST_ARGS ?=

.PHONY: venv test test-fast demo bench clean

venv: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# Full suite, slow tests included (CI runs this). pytest exits 5 when no test ran: that fails too.
test: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q $(PYTEST_ARGS) tests

test-fast: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS) tests

demo: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m qrec_tf.demo --output $(DEMO_DIR)

bench: $(STAMP)
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/pipeline_throughput.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/vocab_scaling.py
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) benchmarks/serving_latency.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) bench_out .pytest_cache
