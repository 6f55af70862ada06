# Set-up on a fresh machine is part of each target: the first run creates .venv with pip.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

# The main job. Until training lands, it prints the model zoo and one cost table.
demo: $(STAMP)
	$(BIN)/mobilenets zoo
	@echo
	$(BIN)/mobilenets cost mobilenet_v2_1.0_224 --by-kind --standard

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/inference_cpu.py

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
