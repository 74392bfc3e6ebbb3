# Fresh machine:  make pipeline   (the whole tutorial on the embedded default)
#                 make test       (lint + unit tests + notebook smoke test)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= default
ARGS ?=

.PHONY: install pipeline smoke test lint benchmarks lab checkpoints clean-runs

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cortex)" >/dev/null
	touch $@

install: $(BIN)/.installed

pipeline: install
	$(BIN)/python -m cortex_utils.pipeline --preset $(PRESET) $(ARGS)

smoke: install
	$(BIN)/python -m cortex_utils.pipeline --preset smoke $(ARGS)

lint: install
	$(BIN)/ruff check cortex_utils tests benchmarks notebooks

test: lint
	$(BIN)/python -m pytest

benchmarks: install
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

lab: install
	cd notebooks && ../$(BIN)/jupyter lab

# Rebuild the shipped default checkpoints (VQ model, transformer, evaluators, IEMs) and copy them to checkpoints/.
checkpoints: install
	rm -rf runs/rebuild-checkpoints
	$(BIN)/python -m cortex_utils.pipeline --preset default -p retrain true --run-dir runs/rebuild-checkpoints $(ARGS)
	cp runs/rebuild-checkpoints/checkpoints/*.safetensors runs/rebuild-checkpoints/checkpoints/*.json checkpoints/
	cp runs/rebuild-checkpoints/iem/iem?.safetensors runs/rebuild-checkpoints/iem/iem?.json checkpoints/

clean-runs:
	rm -rf runs/
