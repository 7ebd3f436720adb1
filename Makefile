# omtseg — run `make help` for the targets.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/world.yaml
ABLATE_CONFIG ?= $(CONFIG)
PYTEST_ARGS ?= -n 2

.DEFAULT_GOAL := help
.PHONY: help install test lint demo pretrain ablate ablate-text bench eval-all clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

# torch is installed first and pinned: any later resolution is then satisfied by 2.13.0 (CPU) and
# pip never downloads another torch or its CUDA packages. torchscale/fairscale are the parity
# references only, installed without their dependency pins (they would pull torchvision/timm).
$(STAMP): pyproject.toml setup.py $(wildcard omtseg/_native/*.c omtseg/_native/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps torchscale==0.3.0 fairscale==0.4.0
	@# pycocoevalcap's caption metrics run on Java (without it: our own tokens, labelled not official).
	@command -v java >/dev/null || (apt-get update && apt-get install -y default-jre-headless) \
		|| echo "java missing: install default-jre-headless for the official caption metrics"
	touch $@

install: $(STAMP) ## create .venv with torch 2.13.0 (CPU) and every pinned dependency

test: $(STAMP) ## run the test suite (installs first)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP) ## ruff + mypy
	$(BIN)/ruff check omtseg tests benchmarks
	$(BIN)/mypy omtseg

demo: $(STAMP) ## open-vocabulary world: pretrain BEiT-3 -> fit on seen classes -> zero-shot test -> pictures
	$(BIN)/omtseg demo --config $(CONFIG) --out outputs/demo

pretrain: $(STAMP) ## remake weights/beit3_tiny_world.pth: BEiT-3 masked data modeling (+ VLMo's contrast, matching) on the world's captions
	$(BIN)/omtseg pretrain --config configs/pretrain/world_tiny.yaml --out weights/beit3_tiny_world.pth --half

ablate: $(STAMP) ## full model, the three ablations and the random-backbone baseline, 3 seeds (outputs/ablate)
	$(BIN)/omtseg ablate --config $(ABLATE_CONFIG) --out outputs/ablate

ablate-text: $(STAMP) ## the text attention modes sequential and per-name on the world, 3 seeds (outputs/ablate_text)
	$(BIN)/omtseg ablate --config $(ABLATE_CONFIG) --out outputs/ablate_text \
		--variants "sequential text attention" "per-name text attention"

bench: $(STAMP) ## performance suite (outputs/bench)
	$(BIN)/python -m benchmarks.run --out outputs/bench

eval-all: $(STAMP) ## every zero-shot benchmark present under $OMTSEG_DATASETS (CKPT=...)
	$(BIN)/omtseg eval-all --ckpt $(CKPT) --out outputs/eval

clean: ## remove outputs, caches and the virtualenv
	rm -rf outputs lightning_logs .pytest_cache .ruff_cache .mypy_cache $(VENV)
	find . -name __pycache__ -prune -exec rm -rf {} +
