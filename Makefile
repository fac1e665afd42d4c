# The two commands of the README: `make run` and `make test`. Both set up the
# virtual environment on first use, installing the pinned CPU build of torch
# first so that no multi-GB CUDA wheel is ever pulled in.

VENV    ?= .venv
PYTHON  ?= python3
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PLUGINS := plugins/lclr-stylegan2 plugins/lclr-directions plugins/lclr-baselines \
           plugins/lclr-contrastive plugins/lclr-shapes plugins/lclr-biggan
TESTKIT := tests/plugins/lclr-toy

.PHONY: setup run test lint docs clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt $(wildcard plugins/*/pyproject.toml) \
          $(TESTKIT)/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e ".[dev,docs]" \
		$(addprefix -e ,$(PLUGINS)) -e $(TESTKIT)
	touch $@

run: $(STAMP)
	$(BIN)/lclr run --generator stylegan2

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir build/site

test: lint docs
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) build site .pytest_cache .ruff_cache
