#!/usr/bin/env bash
# `make airflow-check`: load jobs/airflow/voiceclf_dag.py with a real Apache Airflow and check its shape.
#
# Airflow lives in its own virtualenv, .airflow-venv/ at the repo root (git-ignored), never in .venv:
# its dependency pins would fight the project's (mlflow, sqlalchemy, ...). The venv is created once and
# reused; Airflow is reinstalled only when AIRFLOW_VERSION changes. The first run downloads and installs Airflow
# from PyPI (about 40 s on 2 cores with a cold pip cache, ~290 MB); later runs take ~3 s.
#
# No official constraints file: it is served from GitHub, which this network cannot reach, so pip
# resolves Airflow's dependencies from PyPI alone. The check only parses the DAG, so that is enough.
#
#   bash jobs/airflow/check.sh                          # or: make airflow-check
#   AIRFLOW_VERSION=2.11.2 AIRFLOW_VENV=/tmp/af2 bash jobs/airflow/check.sh   # another release, another venv
#
# AIRFLOW_HOME is a temp dir removed on exit, so nothing (airflow.cfg, a SQLite DB, logs) lands in the repo.
# Exit status: 0 when the DAG loads with the expected tasks, non-zero on any failure.
set -euo pipefail

AIRFLOW_VERSION="${AIRFLOW_VERSION:-3.3.2}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${AIRFLOW_VENV:-$ROOT/.airflow-venv}"
PY="$VENV/bin/python"
STAMP="$VENV/.installed-apache-airflow-$AIRFLOW_VERSION"

now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.0f", b - a }'; }
# pip, minus this machine's notes about local package folders that hold no such project
pip_install() {
    "$PY" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2 || true)
}

if [[ ! -f "$STAMP" ]]; then
    t0="$(now)"
    [[ -x "$PY" ]] || python3 -m venv "$VENV"
    rm -f "$VENV"/.installed-apache-airflow-*
    echo "airflow-check: installing apache-airflow==$AIRFLOW_VERSION into $VENV (first run only: about a minute)" >&2
    pip_install --upgrade pip
    pip_install "apache-airflow==$AIRFLOW_VERSION"
    touch "$STAMP"
    echo "airflow-check: installed apache-airflow $AIRFLOW_VERSION in $(since "$t0") s" >&2
fi

AIRFLOW_HOME="$(mktemp -d -t voiceclf-airflow-home.XXXXXX)"
trap 'rm -rf "$AIRFLOW_HOME"' EXIT
export AIRFLOW_HOME
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__DAGS_FOLDER="$ROOT/jobs/airflow"
export AIRFLOW__LOGGING__LOGGING_LEVEL=WARNING
export PYTHONDONTWRITEBYTECODE=1  # no __pycache__ beside the DAG

t0="$(now)"
"$PY" - "$ROOT/jobs/airflow" <<'PY'
import inspect
import sys
import warnings
from datetime import datetime, timezone

warnings.simplefilter("ignore")  # Airflow's own deprecation chatter is not what this checks
import airflow
from airflow.models import DagBag

folder = sys.argv[1]
# Airflow 2 takes include_examples; Airflow 3 dropped it (AIRFLOW__CORE__LOAD_EXAMPLES=False covers both).
kwargs = {"include_examples": False} if "include_examples" in inspect.signature(DagBag).parameters else {}
bag = DagBag(dag_folder=folder, **kwargs)
problems = [f"import error in {path}:\n{err}" for path, err in bag.import_errors.items()]
dag = bag.dags.get("voiceclf")
if dag is None:
    problems.append(f"no DAG 'voiceclf' in {folder} (found: {sorted(bag.dags) or 'none'})")
elif sorted(dag.task_ids) != ["featurize", "score", "train"]:
    problems.append(f"DAG voiceclf has tasks {sorted(dag.task_ids)}, expected exactly featurize, train, score")
else:
    edges = {t: sorted(dag.get_task(t).downstream_task_ids) for t in ("featurize", "train", "score")}
    if edges != {"featurize": ["train"], "train": ["score"], "score": []}:
        problems.append(f"DAG voiceclf edges are {edges}, expected featurize >> train >> score")
    # Render the templated fields as a run would (with and without a logical date) to catch Jinja slips.
    env = dag.get_template_env()
    params = {k: dag.params[k] for k in dag.params}
    run = type("DagRun", (), {"run_after": datetime(2025, 1, 3, tzinfo=timezone.utc)})()
    for ctx, day in (({"ds": "2025-01-02"}, "2025-01-02"), ({}, "2025-01-03")):
        ctx = {**ctx, "params": params, "dag_run": run, "var": {"value": {}}}
        try:
            cmd = {t: env.from_string(dag.get_task(t).bash_command).render(**ctx) for t in dag.task_ids}
            envs = {t: {k: env.from_string(v).render(**ctx) for k, v in dag.get_task(t).env.items()} for t in dag.task_ids}
            cwd = envs["score"].get("VOICECLF_HOME", "")
        except Exception as e:  # noqa: BLE001
            problems.append(f"templates do not render: {type(e).__name__}: {e}")
            break
        if envs["score"].get("VOICECLF_REPORT") != f"reports/report-{day}.csv" or "python -m jobs.featurize" not in cmd["featurize"] or not cwd.startswith("/"):
            problems.append(f"unexpected rendering: cwd={cwd!r} {cmd} {envs}")
        # params are data: passed in env (added to the worker's own), never pasted into the shell command
        for t in dag.task_ids:
            # BashOperator renders cwd as a template only from Airflow 2.9: the DAG claims 2.4+, so no task may set it
            if getattr(dag.get_task(t), "cwd", None):
                problems.append(f"{t}: sets cwd=, a template only from Airflow 2.9; cd into $VOICECLF_HOME in the command")
            if 'cd -- "$VOICECLF_HOME"' not in dag.get_task(t).bash_command:
                problems.append(f"{t}: its command does not change into $VOICECLF_HOME")
            if "params." in dag.get_task(t).bash_command or not dag.get_task(t).append_env:
                problems.append(f"{t}: params must reach the command through env= with append_env=True")
if problems:
    print("airflow-check: FAILED\n" + "\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"airflow-check: OK: DAG voiceclf loads on Airflow {airflow.__version__}: featurize >> train >> score, templates render", end="")
PY
echo " (check $(since "$t0") s)"
