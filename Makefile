# The README's two commands: `make demo` and `make test`.
# Both create (or reuse) .venv and install the project into it first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
# A bare `torch` requirement pulls a multi-GB CUDA build. Without a GPU we install the
# CPU wheel first; on a GPU machine pass TORCH_SPEC=torch (or any CUDA build you prefer).
TORCH_SPEC ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo "torch>=2.4" || echo "torch==2.13.0")
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[test,train]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) train_accelerate.py

test: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b; done

clean:
	rm -rf $(VENV) outputs .pytest_cache
