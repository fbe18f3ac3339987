# Fresh-machine entry points: `make train` (the default growing run) and `make test`.
# The venv gets CPU torch 2.13.0 only when no torch is importable in it, so a GPU user
# who installs their own torch first (e.g. `make venv TORCH=skip`) keeps it.
# `make train` installs progrow alone; `make test` adds what the whole default suite
# needs (the `dev` and `hf` extras: the Hugging Face parity tests run, never skip).
PYTHON ?= python3
# Extras for `make venv` and `make lint` (the test suite's).
EXTRAS ?= dev,hf
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: venv train test lint clean-venv

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# One stamp per install: `train` needs progrow, `test` (and `venv`, `lint`) the extras.
define install
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install "torch==2.13.0"
	$(BIN)/pip install -e "$(1)"
	touch $@
endef

$(VENV)/.installed-train: pyproject.toml | $(BIN)/activate
	$(call install,.)

$(VENV)/.installed-test: pyproject.toml | $(BIN)/activate
	$(call install,.[$(EXTRAS)])

venv: $(VENV)/.installed-test

train: $(VENV)/.installed-train
	$(BIN)/python -m progrow.train $(ARGS)

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest $(ARGS)

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

clean-venv:
	rm -rf $(VENV)
