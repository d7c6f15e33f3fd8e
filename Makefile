# Two commands for a fresh machine: `make demo` and `make test`.
# Setup keeps a torch that the system python already has (GPU users bring their own);
# otherwise it installs the local CPU build torch==2.13.0 before anything else.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= demo_out

.PHONY: demo test setup clean bench

$(VENV)/.ok: pyproject.toml Makefile
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	$(PY) -m pip install -q --no-deps fastmri==0.3.0
	touch $@

setup: $(VENV)/.ok

demo: $(VENV)/.ok
	$(VENV)/bin/mrrobust demo --out $(DEMO_OUT)

test: $(VENV)/.ok
	$(PY) -m pytest -q

bench: $(VENV)/.ok
	$(PY) -m pip install -q torchio==1.2.1
	$(PY) benchmarks/artifacts.py
	$(PY) benchmarks/prepare.py
	$(PY) benchmarks/train.py

clean:
	rm -rf $(VENV) $(DEMO_OUT)
