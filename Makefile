# Fresh-machine entry points: `make train` (the default growing run) and `make test`.
# The venv gets CPU torch 2.13.0 only when no torch is importable in it, so a GPU user
# who installs their own torch first (e.g. `make venv TORCH=skip`) keeps it.
PYTHON ?= python3
# Optional extras installed with progrow (CI adds `hf`: make venv EXTRAS=dev,hf).
EXTRAS ?= dev
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv train test lint clean-venv

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e ".[$(EXTRAS)]"
	touch $@

venv: $(VENV)/.installed

train: venv
	$(BIN)/python -m progrow.train $(ARGS)

test: venv
	$(BIN)/python -m pytest $(ARGS)

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

clean-venv:
	rm -rf $(VENV)
