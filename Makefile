# Set-up on a fresh machine is part of each target: the first run creates .venv with pip and
# installs the package with its dev extra, which holds every optional extra: the demo's training
# plots need [plots], bench needs [onnx], the tests need all of them (and the docs build). The
# tests also need onnxruntime-web for the browser demo, which npm installs into web/node_modules.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
NODE_MODULES := web/node_modules/.package-lock.json

.PHONY: demo test lint bench clean system

# Debian packages the tests need besides Python's: venv for .venv, and for the browser demo's
# test headless Chromium with its chromedriver and npm (for onnxruntime-web). Installed with
# apt-get when they are missing (as root, or through sudo); elsewhere one line names them.
system:
	@missing=""; \
	$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || missing="$$missing python3-venv"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v chromedriver >/dev/null || missing="$$missing chromium-driver"; \
	command -v npm >/dev/null || missing="$$missing nodejs npm"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ]; then sudo=""; else sudo="sudo -n"; fi; \
	if command -v apt-get >/dev/null && { [ -z "$$sudo" ] || sudo -n true 2>/dev/null; }; then \
		echo "installing Debian packages:$$missing"; \
		$$sudo apt-get update -qq && $$sudo apt-get install -y -qq $$missing; \
	else \
		echo "make test needs the Debian packages$$missing: run apt-get install$$missing" >&2; \
		exit 1; \
	fi

# The main job: train a MobileNetV2 on the real Fashion-MNIST (about 9 minutes on 2 CPU cores,
# about 90% test top-1) into a new folder under runs/.
DEMO_OUT ?= runs/fashion-mnist-$(shell date +%Y%m%d-%H%M%S)
demo: $(STAMP)
	$(BIN)/mobilenets train --data fashion-mnist --model mobilenet_v2 --alpha 0.5 --epochs 2 \
		--augment basic --random-erasing 0 --ema-decay 0 --warmup-epochs 0.3 --workers 1 \
		--out $(DEMO_OUT)

# One pytest-xdist worker per core; a test file's tests stay on one worker, so its module
# fixtures (exports, small trained checkpoints) are built once; files are handed out in
# collection order, which tests/conftest.py starts with the slow ones.
test: system $(STAMP) $(NODE_MODULES)
	$(BIN)/python -m pytest -n auto --dist loadfile --no-loadscope-reorder

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/inference_cpu.py
	$(BIN)/python benchmarks/train_cpu.py
	$(BIN)/python benchmarks/deploy_cpu.py

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# onnxruntime-web at the version web/package-lock.json pins (its dist/ files need no install
# scripts)
$(NODE_MODULES): web/package.json web/package-lock.json
	npm ci --prefix web --ignore-scripts --no-audit --no-fund
	touch $(NODE_MODULES)

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache web/node_modules
