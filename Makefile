# The two commands of the README's quick start: `make demo` and `make test`.
# Both create .venv on first use and reinstall when pyproject.toml changes.

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.wsss-installed
DEMO_OUT ?= demo_out

.PHONY: demo demo-quick test test-fast install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -c "import torch, torchvision, pydensecrf.densecrf, pycocotools"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/wsss demo --out $(DEMO_OUT)

demo-quick: $(STAMP)
	$(VENV)/bin/wsss demo --quick --out $(DEMO_OUT)-quick

test: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -m "not slow"

clean:
	rm -rf $(DEMO_OUT) $(DEMO_OUT)-quick .pytest_cache
