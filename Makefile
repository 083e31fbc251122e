# Two commands on a fresh machine:  `make demo`  (the main job on demo data)  and  `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
# The PyTorch tested with bpho; `make TORCH=torch` for the newest release.
TORCH ?= torch==2.14.1 torchvision==0.29.1
export BPHO_ROOT ?= $(CURDIR)/bpho-data
DEMO := $(BPHO_ROOT)/demo

.PHONY: install demo test test-fast lint clean-demo

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

demo: install
	test -d $(DEMO) || $(BIN)/bpho demo-data $(DEMO)
	$(BIN)/bpho datasource add confocal_airyscan_pairs_mito $(DEMO)/paired --kind paired
	$(BIN)/bpho datasource add demo_movie $(DEMO)/movie --kind movie
	$(BIN)/bpho datasource add demo_hr_only $(DEMO)/hr_only --kind hr
	$(BIN)/bpho datasource add demo_denoise $(DEMO)/denoise --kind denoise
	$(BIN)/bpho datasource verify
	$(BIN)/bpho datasource list
	test -d $(BPHO_ROOT)/datasets/paired_001/images || $(BIN)/bpho dataset make paired_001 --force
	$(BIN)/bpho dataset list
	$(BIN)/bpho train --dataset paired_001 --minutes 2
	$(BIN)/bpho evaluate --model models:/bpho-paired_001@champion --dataset paired_001 --out $(BPHO_ROOT)/evaluation/paired_001
	$(BIN)/bpho predict --model models:/bpho-paired_001@champion $(DEMO)/movie/lr/movie_000.czi --out $(BPHO_ROOT)/predictions
	@echo "See the runs and the registered model: $(BIN)/bpho ui --open"

# every test, one process per core (pytest-xdist; a test file stays in one process, so its module
# fixtures are made once) with one torch thread each, so that two cores are not asked for four threads
test: install
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n auto --dist loadfile

# the inner loop: the unit tests only (pyproject's markers; under 2 minutes on 2 cores)
test-fast: install
	$(BIN)/python -m pytest -q -m unit

# ruff (pyflakes, pycodestyle, bugbear, numpydoc docstrings) and mypy on the package; settings in pyproject.toml
lint: install
	$(BIN)/ruff check bpho
	$(BIN)/mypy bpho

clean-demo:
	rm -rf $(DEMO) $(BPHO_ROOT)/datasources
