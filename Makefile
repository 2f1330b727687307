# The two commands of the README: `make demo` (train + evaluate the tiny SaMoE) and `make test`.
# Each creates the virtual environment from requirements.txt when it is missing.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdir/tiny_samoe
CONFIG ?= configs/tiny_samoe.py
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv demo test bench describe clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m samoe_jax.train --config=$(CONFIG) --workdir=$(WORKDIR)

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

bench: $(STAMP)
	$(PY) -m samoe_jax.bench

describe: $(STAMP)
	$(PY) -m samoe_jax.describe --config=$(CONFIG)

clean-venv:
	rm -rf $(VENV)
