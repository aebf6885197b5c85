# Set-up and everyday commands. `make demo` and `make test` work from a clean clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint format bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# CPU torch first: a bare `torch` requirement would pull several GB of CUDA packages.
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	# zennit pins torchvision, which cannot be imported here: install it alone.
	$(PY) -m pip install --quiet --no-deps "zennit==0.5.1"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/sglrp reproduce --out report
	@echo "Open report/index.html (tables: report/summary.md)"

test: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/ruff format --check src tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks
	$(VENV)/bin/ruff format src tests benchmarks

bench: $(STAMP)
	$(PY) benchmarks/speed.py --json benchmarks/speed.json

clean:
	rm -rf $(VENV) report
