# The two commands of the README: `make demo` (train, evaluate and sample the demo SaMoE) and `make test`.
# Each creates the virtual environment from requirements.txt when it is missing.
# The first of these interpreters that runs here (requirements.txt pins for 3.11 and, by markers, for 3.12+);
# `make test PYTHON=python3.12 VENV=.venv-py312` picks another.
PYTHON ?= $(shell for p in python3.11 python3.12 python3.13 python3; do $$p -c 'import sys' >/dev/null 2>&1 && { echo $$p; break; }; done)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WORKDIR ?= workdir/demo_samoe
CONFIG ?= configs/demo_samoe.py
export TF_CPP_MIN_LOG_LEVEL := 2

.PHONY: venv demo test test-fast bench describe clean-venv

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

# Train the SaMoE demo (report.md, loss and mixing figures), score the 13 tasks on the shipped fixtures (a pipeline
# check: a few documents per task), rewrite report.md with them and print a sample (about 5.5 minutes on 2 cores).
demo: $(STAMP)
	$(PY) -m samoe_jax.train --config=$(CONFIG) --workdir=$(WORKDIR)
	$(PY) -m samoe_jax.evaluate --workdir=$(WORKDIR) --eval_data_dir=tests/fixtures/eval --tasks=all
	$(PY) -m samoe_jax.report --workdir=$(WORKDIR)
	$(PY) -m samoe_jax.generate --workdir=$(WORKDIR) --prompt='JULIET:' --max_new_tokens=48 --temperature=1.0 \
	    --seed=0

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile tests

# The core subset CI runs on the second Python (the MoE/SaMoE layers against their references, mixing with a resumed
# run, the optimizer, configs, generation): a few minutes.
FAST_TESTS ?= tests/test_moe_layer.py tests/test_mixing.py tests/test_optimizer.py tests/test_config.py \
	tests/test_generate.py
test-fast: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile $(FAST_TESTS)

bench: $(STAMP)
	$(PY) -m samoe_jax.bench

describe: $(STAMP)
	$(PY) -m samoe_jax.describe --config=$(CONFIG)

clean-venv:
	rm -rf $(VENV)
