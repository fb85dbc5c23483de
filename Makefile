# seer — the two commands a new user needs: `make run` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
SAMPLES ?= runs/sample-images
CONFIG ?= local
ARGS ?=

.PHONY: venv test lint run seed bench clean

venv: $(STAMP)

# Installs the project with its test extras, then swaps pillow for pillow-simd (SIMD resize and
# colour conversion: the multi-crop hot path). pillow-simd must come after torchvision, which pulls
# plain pillow in; when it cannot build, plain pillow goes back with a one-line warning.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77" wheel pybind11
	$(PIP) install -q -e ".[test]"
	@if $(PY) -c "import PIL, sys; sys.exit(0 if '.post' in PIL.__version__ else 1)" 2>/dev/null; then \
		echo "pillow-simd already installed"; \
	else \
		$(PIP) uninstall -q -y pillow; \
		if CC="cc -mavx2" $(PIP) install -q --no-build-isolation --no-cache-dir pillow-simd >$(VENV)/pillow-simd.log 2>&1; then \
			echo "pillow-simd installed"; \
		else \
			echo "WARNING: pillow-simd did not build (see $(VENV)/pillow-simd.log); using plain pillow"; \
			$(PIP) install -q pillow; \
		fi; \
	fi
	@touch $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .

seed: $(STAMP)
	@test -d $(SAMPLES) || $(VENV)/bin/seer seed --out $(SAMPLES)

run: $(STAMP) seed
	$(VENV)/bin/seer pretrain --config $(CONFIG) $(ARGS)

bench: $(STAMP)
	$(PY) benchmarks/multicrop.py --floor
	$(PY) benchmarks/train_step.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
