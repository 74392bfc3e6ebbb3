# Fresh machine:  make pipeline   (the whole tutorial on the embedded default)
#                 make test       (lint + unit tests + notebook smoke test)
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
PRESET ?= default
ARGS ?=

.PHONY: install pipeline smoke test lint benchmarks lab checkpoints checkpoints-vqvae clean-runs verify verify-isa \
	verify-vqvae verify-vqvae-isa compare codebook-sizes sync-notebooks student book

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (cortex)" >/dev/null
	touch $@

install: $(BIN)/.installed

pipeline: install
	$(BIN)/python -m cortex_run.pipeline --preset $(PRESET) $(ARGS)

smoke: install
	$(BIN)/python -m cortex_run.pipeline --preset smoke $(ARGS)

# ruff lints the notebooks in both forms and formats their text forms (pyproject: format excludes *.ipynb)
lint: install
	$(BIN)/ruff check cortex_utils cortex_run tests benchmarks tools notebooks book
	$(BIN)/ruff format --check cortex_utils cortex_run tests benchmarks tools notebooks book

test: lint
	$(BIN)/python -m pytest

# the measurements (make_expected, verify_expected and readme_results are tools that take arguments)
BENCHMARKS := tis_speed cliff_delta bias_calibration sampling_cache ddp_tis isa_kernels
benchmarks: install
	for b in $(BENCHMARKS); do $(BIN)/python benchmarks/$$b.py || exit 1; done

# A student's copy of the notebooks in student/: the solution cells replaced by blank answer cells
# (tools/student_copy.py); the teacher keeps notebooks/ (run with -p solutions true to reveal).
student: install
	$(BIN)/python tools/student_copy.py --out student

# The executed notebooks of the newest finished default run (or RUN=<dir>) as a static site, built offline:
# open book/_build/html/index.html in a browser (cortex_run/book.py; checked in Chromium by tests/live/check_book.py)
book: install
	$(BIN)/python -m cortex_run.book $(if $(RUN),--run $(RUN))

lab: install
	cd notebooks && ../$(BIN)/jupyter lab

# Rebuild every shipped file from scratch: the models (VQ model, transformers, evaluators, IEMs, attribute and
# shuffled-label IEMs, the IEM on composites of notebook 14) into checkpoints/, the token datasets they were trained
# on into data/default/ (with notebook 14's composites).
REBUILD := runs/rebuild-checkpoints
checkpoints: install
	rm -rf $(REBUILD)
	$(BIN)/python -m cortex_run.pipeline --preset default -p retrain true --run-dir $(REBUILD) $(ARGS)
	cp $(REBUILD)/checkpoints/*.safetensors $(REBUILD)/checkpoints/*.json checkpoints/
	cp $(REBUILD)/iem/iem*.safetensors $(REBUILD)/iem/iem*.json checkpoints/
	cp $(REBUILD)/bias/attribute_iem_*.safetensors $(REBUILD)/bias/attribute_iem_*.json checkpoints/
	rm -rf data/default && mkdir -p data/default
	cp -r $(REBUILD)/datasets/generated $(REBUILD)/datasets/generated.json data/default/
	cp -r $(REBUILD)/datasets/composites $(REBUILD)/datasets/composites.json data/default/
	cp -r $(REBUILD)/bias/data data/default/bias

# The default run into runs/verify, checked against docs/expected_metrics.json (benchmarks/verify_expected.py:
# every key within its tolerance; docs/expected_metrics.md). EXPECTED=<file> checks against another file.
EXPECTED ?= docs/expected_metrics.json
VERIFY_PRESET ?= default
VERIFY_DIR ?= runs/verify
verify: install
	rm -rf $(VERIFY_DIR)
	$(BIN)/python -m cortex_run.pipeline --preset $(VERIFY_PRESET) --run-dir $(VERIFY_DIR) $(ARGS)
	$(BIN)/python benchmarks/isa_kernels.py --describe > $(VERIFY_DIR)/isa.txt
	$(BIN)/python benchmarks/verify_expected.py $(VERIFY_DIR) --expected $(EXPECTED)

# The same with every CPU kernel library (ATen, oneDNN, MKL) restricted to the instruction set one level below
# this machine's: AVX-512 -> AVX2, AVX2 -> none (benchmarks/isa_kernels.py measures that each of them changes the
# outputs here). ISA_ENV="ATEN_CPU_CAPABILITY=default ..." sets the restriction by hand.
ISA_ENV ?=
verify-isa: install
	rm -rf $(VERIFY_DIR)-isa
	isa="$(or $(ISA_ENV),$$($(BIN)/python benchmarks/isa_kernels.py --print-verify-setting))" && \
	echo "verify-isa: $$isa" && \
	env $$isa $(BIN)/python -m cortex_run.pipeline --preset $(VERIFY_PRESET) --run-dir $(VERIFY_DIR)-isa $(ARGS) && \
	env $$isa $(BIN)/python benchmarks/isa_kernels.py --describe > $(VERIFY_DIR)-isa/isa.txt
	$(BIN)/python benchmarks/verify_expected.py $(VERIFY_DIR)-isa --expected $(EXPECTED)

# The second tokenizer family (--preset vqvae: the FSQ VQ-VAE on the encoded real digits) into runs/verify-vqvae,
# checked against docs/expected_metrics_vqvae.json; -isa: with the CPU kernels restricted as in verify-isa.
VQVAE_VERIFY := VERIFY_PRESET=vqvae VERIFY_DIR=runs/verify-vqvae EXPECTED=docs/expected_metrics_vqvae.json
verify-vqvae:
	$(MAKE) verify $(VQVAE_VERIFY)

verify-vqvae-isa:
	$(MAKE) verify-isa $(VQVAE_VERIFY)

# Rebuild the second family's shipped files: the FSQ VQ-VAE (checkpoints/vqvae_fsq/), then with it the encoded
# digits (data/vqvae_fsq/encoded) and the IEMs and shuffled-label IEM trained on them.
REBUILD_VQVAE := runs/rebuild-vqvae
checkpoints-vqvae: install
	rm -rf $(REBUILD_VQVAE) && mkdir -p checkpoints/vqvae_fsq
	$(BIN)/python -m cortex_run.pipeline --preset vqvae --only 01_vq_model -p retrain true \
		-p checkpoint_out checkpoints/vqvae_fsq --run-dir $(REBUILD_VQVAE) $(ARGS)
	$(BIN)/python -m cortex_run.pipeline --preset vqvae -p regenerate true -p 03_train_iem.retrain true \
		-p 11_trust_the_explanations.retrain true --run-dir $(REBUILD_VQVAE) $(ARGS)
	cp $(REBUILD_VQVAE)/iem/iem*.safetensors $(REBUILD_VQVAE)/iem/iem*.json checkpoints/vqvae_fsq/
	rm -rf data/vqvae_fsq && mkdir -p data/vqvae_fsq
	cp -r $(REBUILD_VQVAE)/datasets/encoded $(REBUILD_VQVAE)/datasets/encoded.json data/vqvae_fsq/

# The two families side by side on the same real digits (notebook 12): a taming run and an FSQ run, encoded.
compare: install
	$(BIN)/python -m cortex_run.pipeline --preset encoded --run-dir runs/compare/taming_vqgan $(ARGS)
	$(BIN)/python -m cortex_run.pipeline --preset vqvae --run-dir runs/compare/vqvae_fsq $(ARGS)
	$(BIN)/python -m cortex_run.pipeline --preset compare --run-dir runs/compare

# The codebook-size study (--preset codebook-sizes): notebooks 01-08 with the taming VQ model of 64, 256 and 1,024
# codes (checkpoints/vq_mnist*.json) into runs/codebook-sizes/k<size>, then notebook 12's table of them
# (runs/codebook-sizes/codebook_sizes.csv, docs/codebook_sizes.json).
codebook-sizes: install
	$(BIN)/python -m cortex_run.pipeline --preset codebook-sizes --run-dir runs/codebook-sizes $(ARGS)

# Notebooks and their text forms (notebooks/NN_name.py, jupytext percent format): the newer of each pair wins.
sync-notebooks: install
	$(BIN)/jupytext --sync notebooks/[0-9][0-9]_*.ipynb

clean-runs:
	rm -rf runs/
