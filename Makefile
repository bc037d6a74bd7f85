# voiceclf — the front door. Every target sets itself up (`make setup`) first.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.voiceclf-installed

DATA ?= $(error set DATA=<corpus folder or manifest.csv>)
OUT ?=
FEATURES ?= features
DIR ?= $(error set DIR=<folder of recordings>)
JOBS ?= -1
HOST ?= 127.0.0.1
PORT ?= 5000

.PHONY: setup test demo features train score ui server bench airflow-check clean

# A value as one shell word, whatever it holds (spaces, quotes, $(...)): make DIR="my inbox" works, and
# a value is never run as shell code.
q = '$(subst ','\'',$(1))'

setup: $(STAMP)

# Idempotent: reinstalls only when pyproject.toml or this file changes. torch first, pinned to the CPU build.
# The speaker encoder's weights come from the Resemblyzer wheel, installed without its dependencies: voiceclf
# reads only its weights file (its own imports need webrtcvad and pkg_resources, which nothing here uses).
# Last, librosa's numba cache is compiled once, before any parallel job (see voiceclf/parallel.py).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,dask]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps resemblyzer==0.1.4
	$(PY) -c 'from voiceclf.parallel import warm_jit_cache; warm_jit_cache()'
	touch $@

# One pytest worker per core (pytest-xdist); --dist loadfile keeps a file's tests on one worker, so its
# module fixtures (a Dask cluster, a locked inbox) start once. At most 4 workers: each builds the session
# fixtures (corpus, features, a champion) and holds ~1.5 GB. A single test: $(PY) -m pytest tests/x.py -k name
test: setup
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

demo: setup
	$(PY) -m jobs.demo

# One shard folder per feature set under OUT (default features/): both model families train from them.
# DATA is a list of corpora (folders or manifest .csv files), separated by spaces: all of them in one call.
FEATURE_SETS ?= mfcc_pitch,speaker_embedding
features: setup
	$(PY) -m jobs.featurize $(foreach d,$(DATA),$(call q,$(d))) --out $(call q,$(or $(OUT),features)) --feature-set $(call q,$(FEATURE_SETS)) --jobs $(call q,$(JOBS))$(if $(or $(VARIANTS),$(AUGMENT)), --variants $(call q,$(or $(VARIANTS),$(AUGMENT))))

train: setup
	$(PY) -m jobs.train --features $(call q,$(FEATURES)) --jobs $(call q,$(JOBS))

# MIN_CONFIDENCE=P: files whose label is less likely than P are labelled `uncertain`. The value reaches the
# job through the environment (make exports a command-line variable to the recipe), never as make or shell code.
score: setup
	$(PY) -m jobs.score $(call q,$(DIR)) --out $(call q,$(or $(OUT),report.csv)) --jobs $(call q,$(JOBS))$(if $(value MIN_CONFIDENCE), --min-confidence="$$MIN_CONFIDENCE")

# The MLflow UI on the embedded store, on loopback: compare the grid's runs side by side.
ui: setup
	mkdir -p mlruns && .venv/bin/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --host $(HOST) --port $(PORT)

# A tracking server for a team: SQLite backend in mlruns/server.db, artifacts stored and served by the
# server. Point the jobs at it with MLFLOW_TRACKING_URI=http://$(HOST):$(PORT).
server: setup
	mkdir -p mlruns && .venv/bin/mlflow server --backend-store-uri sqlite:///$(CURDIR)/mlruns/server.db \
		--artifacts-destination $(CURDIR)/mlruns/server-artifacts --host $(HOST) --port $(PORT)

bench: setup
	$(PY) -m bench.run

airflow-check:
	bash jobs/airflow/check.sh

clean:
	rm -rf features reports demo report.csv bench/work
