"""Airflow DAG `voiceclf`: featurize >> train >> score, running the project's own batch jobs.

Each task runs the same entry point as `make` and cron do (`python -m jobs.featurize|train|score`) with the
project's interpreter, `<VOICECLF_HOME>/.venv/bin/python`, in `<VOICECLF_HOME>`. So the Airflow worker needs
the repo checked out and `make setup` run in it, but nothing of voiceclf installed into Airflow's own
environment: this file imports only Airflow and the standard library.

VOICECLF_HOME, in order: the Airflow Variable `voiceclf_home` (or env AIRFLOW_VAR_VOICECLF_HOME), the
environment variable VOICECLF_HOME on the worker, else the repo this file sits in (jobs/airflow/ -> ../..).

Works with Airflow 2.4+ (`schedule=`, BashOperator's `append_env`) and 3.x. The tasks change into VOICECLF_HOME in
their command (`cd -- "$VOICECLF_HOME"`), not with BashOperator's `cwd=`: `cwd` is rendered as a template only from
Airflow 2.9, so before it the task ran in a folder literally named `{{ var.value... }}`. `make airflow-check` loads
the DAG with a real Airflow and checks that no task sets `cwd`.
"""
from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

from airflow import DAG

try:  # Airflow 3, or Airflow 2 with apache-airflow-providers-standard: the operator's home now
    from airflow.providers.standard.operators.bash import BashOperator
except ImportError:  # Airflow 2.x without the standard provider (a deprecated alias in Airflow 3)
    from airflow.operators.bash import BashOperator

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_HOME = os.environ.get("VOICECLF_HOME") or str(REPO_ROOT)
# Rendered when the task runs, so changing the Variable needs no DAG edit or re-deploy.
HOME = "{{ var.value.get('voiceclf_home', %r) }}" % DEFAULT_HOME
# The run's date: `ds` (the logical date). An Airflow 3 run triggered through the API with no logical
# date has no `ds`, so fall back to the day it was queued to run.
RUN_DATE = "(ds if ds is defined else dag_run.run_after.strftime('%Y-%m-%d'))"
# Trigger-time params reach the commands as environment variables, referenced as "$VAR": rendered
# into bash_command they would be shell code (a data_dir of `x$(rm -rf ~)` would run). `--flag=value`
# and `--` keep a value that starts with "-" from being read as an option.
PARAMS_ENV = {
    "VOICECLF_DATA_DIR": "{{ params.data_dir }}",
    "VOICECLF_FEATURES_DIR": "{{ params.features_dir }}",
    "VOICECLF_GRID_FILE": "{{ params.grid_file }}",
    "VOICECLF_RECORDINGS_DIR": "{{ params.recordings_dir }}",
    "VOICECLF_REPORT": "{{ params.report_path | replace('{ds}', %s) }}" % RUN_DATE,
    "VOICECLF_SEGMENTS": "{{ params.segments_path | replace('{ds}', %s) }}" % RUN_DATE,
    "VOICECLF_SEGMENTS_FORMAT": "{{ params.segments_format }}",
    "VOICECLF_MIN_CONFIDENCE": "{{ params.min_confidence }}",
}

# HOME reaches the commands the same way (env is a templated field in every Airflow 2 and 3; cwd only from 2.9).
TASK_ENV = {**PARAMS_ENV, "VOICECLF_HOME": HOME}

DOC = """
### voiceclf: featurize → train → score

Batch classification of adult male vs female voices. Each task runs one of the project's jobs with
`<VOICECLF_HOME>/.venv/bin/python` in `<VOICECLF_HOME>` (Variable `voiceclf_home`, else env `VOICECLF_HOME`,
else the repo holding this DAG file), the same entry points as `make features|train|score`:

| task | command |
| --- | --- |
| `featurize` | `python -m jobs.featurize <data_dir> --out <features_dir> --feature-set mfcc_pitch,speaker_embedding` (both families; incremental: known files are skipped) |
| `train` | `python -m jobs.train --features <features_dir> --grid <grid_file>`; registers `models:/voiceclf@champion` |
| `score` | `python -m jobs.score <recordings_dir> --out <report_path> --min-confidence <min_confidence> [--segments <segments_path> --segments-format <segments_format>]`, `{ds}` in the paths → the run's date |

**Params** (change them in *Trigger DAG w/ config*): `data_dir` (labelled corpus folder or manifest.csv),
`recordings_dir` (folder to label), `grid_file` (TOML grid), `features_dir` (Parquet shards),
`report_path` (CSV report; relative paths are under VOICECLF_HOME), `segments_path` (speech turns by sex; empty: none)
and `segments_format` (`csv`, `rttm` or `textgrid`). The defaults run on the synthetic
data that `make demo` writes into `demo/`. Params reach the jobs as environment variables (`VOICECLF_*`),
never as part of the shell command, so any value is taken as a path.

**Exit codes.** A task fails on any non-zero exit of its job, and its log shows which:
`1` failure (model not loadable, tracking store down, every grid point failed), `2` bad arguments or inputs
(missing folder, unlabelled data, unwritable output), `3` another run holds the lock on the same output
(`featurize` on `features_dir`, `score` on `report_path`), `130` interrupted (the task was killed; nothing
partial kept under a final name). Exit `4` needs `--fail-on-error`, which these tasks do not pass: per-file
errors are rows in `errors.csv` / the report, and the task succeeds. No job exits 99 (BashOperator's skip code).

**Retries.** Each task is retried twice, 10 minutes apart. That is what handles overlap: a run that finds
the lock held (exit 3, e.g. a cron job or a person running `make score` on the same report) fails, waits,
and tries again once the other run is done. `max_active_runs=1` keeps two runs of this DAG from
overlapping each other. Retrying exit 2 is harmless but will not help: fix the params and clear the task.

**Schedule.** `schedule=None`: triggered by hand, by the API/CLI (`airflow dags trigger voiceclf`) or by
another DAG. For a timetable set e.g. `schedule="0 3 * * 0"` (Sundays 03:00) in this file; `catchup=False`
keeps Airflow from back-filling missed runs. With a cron schedule `{ds}` is the start of the data interval,
i.e. the previous period's date, not the day the run happens.
"""

with DAG(
    dag_id="voiceclf",
    description="voiceclf batch jobs: featurize >> train >> score",
    doc_md=DOC,
    schedule=None,  # manual / externally triggered; e.g. "0 3 * * 0" for Sundays 03:00
    start_date=datetime(2025, 1, 1, tzinfo=timezone.utc),
    catchup=False,
    max_active_runs=1,
    tags=["voiceclf", "ml", "batch"],
    default_args={
        "owner": "voiceclf",
        "retries": 2,
        "retry_delay": timedelta(minutes=10),
    },
    params={
        "data_dir": "demo/corpus",
        "recordings_dir": "demo/recordings",
        "grid_file": "jobs/grid.toml",
        "features_dir": "features",
        "report_path": "reports/report-{ds}.csv",
        "segments_path": "reports/turns-{ds}.csv",
        "segments_format": "csv",
        "min_confidence": 0.0,  # score: a file whose label is less likely than this is labelled `uncertain` (0: never)
    },
) as dag:
    # The commands change into HOME and run the project's interpreter; `exec` hands SIGTERM (task killed)
    # straight to the job, which exits 130 leaving nothing partial under a final name.
    featurize = BashOperator(
        task_id="featurize",
        env=TASK_ENV,
        append_env=True,
        bash_command='cd -- "$VOICECLF_HOME" && exec .venv/bin/python -m jobs.featurize --out="$VOICECLF_FEATURES_DIR" --feature-set=mfcc_pitch,speaker_embedding -- "$VOICECLF_DATA_DIR"',
    )
    train = BashOperator(
        task_id="train",
        env=TASK_ENV,
        append_env=True,
        bash_command='cd -- "$VOICECLF_HOME" && exec .venv/bin/python -m jobs.train --features="$VOICECLF_FEATURES_DIR" --grid="$VOICECLF_GRID_FILE"',
    )
    score = BashOperator(
        task_id="score",
        env=TASK_ENV,
        append_env=True,
        bash_command="""
set -eu
cd -- "$VOICECLF_HOME"
mkdir -p -- "$(dirname -- "$VOICECLF_REPORT")"
set -- --out="$VOICECLF_REPORT" --min-confidence="$VOICECLF_MIN_CONFIDENCE"
if [ -n "$VOICECLF_SEGMENTS" ]; then
    mkdir -p -- "$(dirname -- "$VOICECLF_SEGMENTS")"
    set -- "$@" --segments="$VOICECLF_SEGMENTS" --segments-format="$VOICECLF_SEGMENTS_FORMAT"
fi
exec .venv/bin/python -m jobs.score "$@" -- "$VOICECLF_RECORDINGS_DIR"
""",
    )

    featurize >> train >> score
