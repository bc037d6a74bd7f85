# voiceclf — the front door. Every target sets itself up (`make setup`) first.
SHELL := /bin/bash
PY := .venv/bin/python
STAMP := .venv/.voiceclf-installed

DATA ?=
OUT ?=
FEATURES ?= features
DIR ?=
JOBS ?= -1
HOST ?= 127.0.0.1
PORT ?= 5000
FEATURE_SETS ?= mfcc_pitch,speaker_embedding
VARIANTS ?=
AUGMENT ?=
SEGMENTS ?=
SEGMENTS_FORMAT ?= csv
MIN_CONFIDENCE ?=
DEVICE ?=

.PHONY: setup test demo features train score ui server bench airflow-check clean

# A value is data, never make code nor shell code: `make score DIR='x$$(shell ...)'` or DIR='rec$$2024' arrive
# as typed. A value given on the command line or in the environment is taken unexpanded ($(value ...)) into
# a simple variable, which make never expands again; the recipes read it from the environment, quoted
# ("$$DIR"), so the shell does not run it either. (Quoting for the shell inside make's text was not enough:
# make itself expanded $(...) in a value before any shell saw it, even under `make -n`.)
USER_VARS := DATA OUT FEATURES DIR JOBS HOST PORT FEATURE_SETS VARIANTS AUGMENT SEGMENTS SEGMENTS_FORMAT MIN_CONFIDENCE DEVICE
$(foreach v,$(USER_VARS),$(if $(filter command line environment environment override,$(origin $(v))),$(eval override $(v) := $$(value $(v)))))
override VARIANTS := $(or $(VARIANTS),$(AUGMENT))
export $(USER_VARS)

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
# fixtures (corpus, features, a champion) and holds ~1.5 GB. A single test: $(PY) -m pytest tests/jobs/test_score.py -k name
test: setup
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile

demo: setup
	$(PY) -m jobs.demo

# One shard folder per feature set under OUT (default features/): both model families train from them.
# DATA is a list of corpora (folders or manifest .csv files), separated by spaces: all of them in one call
# (split into words by the shell, with globbing off: set -f).
features: setup
	@test -n "$$DATA" || { echo 'make features: set DATA=<corpus folder or manifest.csv>' >&2; exit 2; }
	set -f; $(PY) -m jobs.featurize $$DATA --out "$${OUT:-features}" --feature-set "$$FEATURE_SETS" --jobs "$$JOBS" $${VARIANTS:+--variants "$$VARIANTS"}

train: setup
	$(PY) -m jobs.train --features "$$FEATURES" --jobs "$$JOBS"

# SEGMENTS=turns.csv also writes the speech turns (SEGMENTS_FORMAT=csv|rttm|textgrid); MIN_CONFIDENCE=P labels a file
# `uncertain` when its label is less likely than P.
score: setup
	@test -n "$$DIR" || { echo 'make score: set DIR=<folder of recordings>' >&2; exit 2; }
	$(PY) -m jobs.score "$$DIR" --out "$${OUT:-report.csv}" --jobs "$$JOBS" $${SEGMENTS:+--segments "$$SEGMENTS" --segments-format "$$SEGMENTS_FORMAT"} $${MIN_CONFIDENCE:+--min-confidence "$$MIN_CONFIDENCE"}

# The MLflow UI on the embedded store, on loopback: compare the grid's runs side by side.
ui: setup
	mkdir -p mlruns && .venv/bin/mlflow ui --backend-store-uri "sqlite:///$$PWD/mlruns/mlflow.db" --host "$$HOST" --port "$$PORT"

# A tracking server for a team: SQLite backend in mlruns/server.db, artifacts stored and served by the
# server. Point the jobs at it with MLFLOW_TRACKING_URI=http://$(HOST):$(PORT).
server: setup
	mkdir -p mlruns && .venv/bin/mlflow server --backend-store-uri "sqlite:///$$PWD/mlruns/server.db" \
		--artifacts-destination "$$PWD/mlruns/server-artifacts" --host "$$HOST" --port "$$PORT"

# DEVICE=cuda (or cpu; default auto) trains and scores the benchmark's models there: the same figures on a GPU machine.
bench: setup
	$(PY) -m bench.run $${DEVICE:+--device "$$DEVICE"}

# Loads the DAG in a real Airflow (its own venv: .airflow-venv, or AIRFLOW_VENV), then runs the scheduling tests with
# it: the DAG's commands as Airflow renders them, run by bash (`make test` runs them too once that venv exists).
airflow-check: setup
	bash jobs/airflow/check.sh
	$(PY) -m pytest -q -p no:cacheprovider -n 0 tests/operations/test_scheduling.py

clean:
	rm -rf features reports demo report.csv bench/work
