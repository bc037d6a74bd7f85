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

setup: $(STAMP)

# Idempotent: reinstalls only when pyproject.toml or this file changes. torch first, pinned to the CPU build.
# The speaker encoder's weights come from the Resemblyzer wheel, installed without its dependencies: voiceclf
# reads only its weights file (its own imports need webrtcvad and pkg_resources, which nothing here uses).
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev,dask]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps resemblyzer==0.1.4
	touch $@

test: setup
	$(PY) -m pytest -q

demo: setup
	$(PY) -m jobs.demo

# One shard folder per feature set under OUT (default features/): both model families train from them.
FEATURE_SETS ?= mfcc_pitch speaker_embedding
features: setup
	for fs in $(FEATURE_SETS); do \
		$(PY) -m jobs.featurize $(DATA) --out $(or $(OUT),features)/$$fs --feature-set $$fs --jobs $(JOBS)$(if $(AUGMENT), --augment $(AUGMENT)) || exit $$?; \
	done

train: setup
	$(PY) -m jobs.train --features $(FEATURES) --jobs $(JOBS)

score: setup
	$(PY) -m jobs.score $(DIR) --out $(or $(OUT),report.csv) --jobs $(JOBS)

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
