# Fresh machine:  make pipeline   (the whole tutorial on the embedded default)
#                 make test       (lint + unit tests + notebook smoke test)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= default
ARGS ?=

.PHONY: install pipeline smoke test lint benchmarks lab checkpoints clean-runs verify verify-isa sync-notebooks

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

# the measurements (make_expected, verify_expected and readme_results are tools that take arguments)
BENCHMARKS := tis_speed cliff_delta bias_calibration sampling_cache ddp_tis isa_kernels
benchmarks: install
	for b in $(BENCHMARKS); do $(BIN)/python benchmarks/$$b.py || exit 1; done

lab: install
	cd notebooks && ../$(BIN)/jupyter lab

# Rebuild every shipped file from scratch: the models (VQ model, transformers, evaluators, IEMs, attribute and
# shuffled-label IEMs) into checkpoints/, the token datasets they were trained on into data/default/.
REBUILD := runs/rebuild-checkpoints
checkpoints: install
	rm -rf $(REBUILD)
	$(BIN)/python -m cortex_utils.pipeline --preset default -p retrain true --run-dir $(REBUILD) $(ARGS)
	cp $(REBUILD)/checkpoints/*.safetensors $(REBUILD)/checkpoints/*.json checkpoints/
	cp $(REBUILD)/iem/iem*.safetensors $(REBUILD)/iem/iem*.json checkpoints/
	cp $(REBUILD)/bias/attribute_iem_*.safetensors $(REBUILD)/bias/attribute_iem_*.json checkpoints/
	rm -rf data/default && mkdir -p data/default
	cp -r $(REBUILD)/datasets/generated $(REBUILD)/datasets/generated.json data/default/
	cp -r $(REBUILD)/bias/data data/default/bias

# The default run into runs/verify, checked against docs/expected_metrics.json (benchmarks/verify_expected.py:
# every key within its tolerance; docs/expected_metrics.md). EXPECTED=<file> checks against another file.
EXPECTED ?= docs/expected_metrics.json
verify: install
	rm -rf runs/verify
	$(BIN)/python -m cortex_utils.pipeline --preset default --run-dir runs/verify $(ARGS)
	$(BIN)/python benchmarks/isa_kernels.py --describe > runs/verify/isa.txt
	$(BIN)/python benchmarks/verify_expected.py runs/verify --expected $(EXPECTED)

# The same with every CPU kernel library (ATen, oneDNN, MKL) restricted to the instruction set one level below
# this machine's: AVX-512 -> AVX2, AVX2 -> none (benchmarks/isa_kernels.py measures that each of them changes the
# outputs here). ISA_ENV="ATEN_CPU_CAPABILITY=default ..." sets the restriction by hand.
ISA_ENV ?=
verify-isa: install
	rm -rf runs/verify-isa
	isa="$(or $(ISA_ENV),$$($(BIN)/python benchmarks/isa_kernels.py --print-verify-setting))" && \
	echo "verify-isa: $$isa" && \
	env $$isa $(BIN)/python -m cortex_utils.pipeline --preset default --run-dir runs/verify-isa $(ARGS) && \
	env $$isa $(BIN)/python benchmarks/isa_kernels.py --describe > runs/verify-isa/isa.txt
	$(BIN)/python benchmarks/verify_expected.py runs/verify-isa --expected $(EXPECTED)

# Notebooks and their text forms (notebooks/NN_name.py, jupytext percent format): the newer of each pair wins.
sync-notebooks: install
	$(BIN)/jupytext --sync notebooks/[0-9][0-9]_*.ipynb

clean-runs:
	rm -rf runs/
