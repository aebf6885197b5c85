# Set-up and everyday commands. `make demo` and `make test` work from a clean clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
APP_STAMP := $(VENV)/.app-installed
SERVE_ARGS ?=
# The torch build. The default is torch 2.13.0 as PyPI publishes it, which is the CUDA build
# on Linux x86_64 (about 17 nvidia-* packages, several GB; it also runs on the CPU) and the
# CPU build on Windows and macOS (MPS on Apple silicon). For the CPU-only build on Linux:
#   make TORCH_INDEX=https://download.pytorch.org/whl/cpu
# For a given CUDA version: TORCH_INDEX=https://download.pytorch.org/whl/cuXYZ (pytorch.org
# lists the versions offered); TORCH picks another torch requirement.
TORCH ?= torch==2.13.0
TORCH_INDEX ?=

.PHONY: demo test lint format bench clean app test-app serve

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, from TORCH_INDEX when given (see above): the package then finds it installed.
	$(PY) -m pip install --quiet "$(TORCH)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e ".[test]"
	# zennit pins torchvision, which cannot be imported here: install it alone.
	$(PY) -m pip install --quiet --no-deps "zennit==0.5.1"
	touch $(STAMP)

# `sglrp serve` needs the app extra (gradio); its browser test needs Playwright and Debian's
# Chromium (`apt-get install chromium`; Playwright drives /usr/bin/chromium, it downloads none).
$(APP_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet -e ".[test,app,app-test]"
	touch $(APP_STAMP)

app: $(APP_STAMP)

test-app: $(APP_STAMP)
	SGLRP_SCREENSHOTS=build/screenshots $(PY) -m pytest -q -p no:cacheprovider \
		tests/test_server.py tests/test_server_browser.py

serve: $(APP_STAMP)
	$(VENV)/bin/sglrp serve $(SERVE_ARGS)

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
