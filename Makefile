# The two entry points (see README): `make run` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV ?= .venv
# Extra pip options. These machines find torch's CPU wheel on disk; elsewhere add the CPU wheel
# index, or pip takes the multi-GB CUDA build:
#   make test PIP_OPTIONS="--extra-index-url https://download.pytorch.org/whl/cpu"
PIP_OPTIONS ?=
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: install run test bench clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; sys.exit("Python 3.11+ is required, found " + sys.version.split()[0]) if sys.version_info < (3, 11) else None'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check "pip==25.3"
	$(BIN)/python -m pip install --quiet --disable-pip-version-check $(PIP_OPTIONS) -c constraints.txt -e '.[test,hf]'
	$(BIN)/python -m pip check
	@rm -f $(VENV)/.installed-*
	@touch $@

# Train the model for a few batches on the embedded defaults (synthetic corpus, SQLite, local files).
run: $(STAMP)
	$(BIN)/quadra db upgrade
	$(BIN)/quadra train --batches 5 --out .quadra/runs/demo
	$(BIN)/quadra model probe .quadra/runs/demo/checkpoint.pt

# The whole test suite (PostgreSQL tests run when the server at 127.0.0.1:5432 answers).
test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_training.py

clean-venv:
	rm -rf $(VENV)
