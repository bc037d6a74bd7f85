"""The scheduling examples: jobs/cron/voiceclf.crontab and jobs/airflow/voiceclf_dag.py, run as their schedulers run them.

Offline: each crontab line runs under /bin/sh as cron hands it over (its environment lines, `%` undone, a fixed
`date`), with a stand-in interpreter that records the job's arguments. The DAG is loaded and its templates rendered by
a real Airflow when one is installed in its own venv (`.airflow-venv`, or $AIRFLOW_VENV: `make airflow-check` installs
it and runs these tests), and always by plain Jinja; its rendered commands then run under bash, the same stand-in.
"""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CRONTAB = REPO / "jobs" / "cron" / "voiceclf.crontab"
DAG_FILE = REPO / "jobs" / "airflow" / "voiceclf_dag.py"

# ----------------------------------------------------------------------------- crontab
ENV_LINE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\s*=")
FIELD_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]  # minute hour day-of-month month day-of-week
UNESCAPED_PERCENT = re.compile(r"(?<!\\)%")


def cron_entries(text: str) -> list[tuple[list[str], str]]:
    """(5 schedule fields, command) for every job line; comments, blank lines and VAR=value lines skipped."""
    entries = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#") or ENV_LINE.match(line):
            continue
        parts = line.split(None, 5)
        assert len(parts) == 6, f"line {n}: expected 5 schedule fields and a command: {raw!r}"
        entries.append((parts[:5], parts[5]))
    return entries


def valid_field(field: str, lo: int, hi: int) -> bool:
    for item in field.split(","):
        m = re.fullmatch(r"(\*|(\d+)(?:-(\d+))?)(?:/(\d+))?", item)
        if not m:
            return False
        if m.group(2) is not None:
            a = int(m.group(2))
            b = int(m.group(3)) if m.group(3) is not None else a
            if not lo <= a <= b <= hi:
                return False
        if m.group(4) is not None and int(m.group(4)) < 1:
            return False
    return True


@pytest.fixture(scope="module")
def entries() -> list[tuple[list[str], str]]:
    return cron_entries(CRONTAB.read_text())


def cron_env(text: str) -> dict[str, str]:
    """The crontab's VAR=value lines: the environment cron gives every command (with HOME, LOGNAME, SHELL of its own)."""
    env = {}
    for line in text.splitlines():
        line = line.strip()
        if ENV_LINE.match(line) and not line.startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


def as_cron_runs(command: str) -> tuple[str, str]:
    """(the command sh gets, its standard input), as cron makes them: an unescaped `%` ends the command and the rest,
    with each further `%` a newline, is its input; `\%` is a plain `%`."""
    parts = UNESCAPED_PERCENT.split(command)
    return parts[0].replace("\\%", "%"), "\n".join(parts[1:]).replace("\\%", "%")


def stand_in_checkout(root: Path, code: int = 0) -> tuple[Path, Path]:
    """A checkout whose `.venv/bin/python` records its arguments (one file per job, a line each) and exits ``code``,
    and a `date` that always says 2025-01-02: a night's run without the clock. Returns (checkout, folder of the `date`)."""
    home, bin_dir = root / "voiceclf", root / "bin"
    (home / ".venv" / "bin").mkdir(parents=True)
    bin_dir.mkdir()
    stub = home / ".venv" / "bin" / "python"
    stub.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "{root}/argv-$2"\nexit {code}\n')
    date = bin_dir / "date"
    date.write_text('#!/bin/sh\ncase "$1" in +%F) echo 2025-01-02 ;; *) exec /bin/date "$@" ;; esac\n')
    for f in (stub, date):
        f.chmod(0o755)
    return home, bin_dir


@pytest.mark.skipif(not shutil.which("sh"), reason="no /bin/sh")
@pytest.mark.parametrize("featurize_code", [0, 3])
def test_crontab_lines_run_the_jobs_with_the_arguments_cron_gives_them(entries, featurize_code, tmp_path):
    """Every line, as cron runs it, in a stand-in checkout: the nightly score writes a dated report and turns with the
    crontab's own confidence setting; the weekly line featurizes both families' sets, then trains on what it wrote, and
    only if featurize succeeded."""
    text = CRONTAB.read_text()
    home, bin_dir = stand_in_checkout(tmp_path, featurize_code)
    logs = tmp_path / "log"
    logs.mkdir()
    env = cron_env(text)
    assert env["SHELL"] == "/bin/sh" and "VOICECLF_MIN_CONFIDENCE" in env
    env = {**env, "PATH": f"{bin_dir}:{env['PATH']}", "HOME": str(tmp_path), "LOGNAME": "voiceclf"}
    schedules = {}
    for fields, cmd in entries:
        command, stdin = as_cron_runs(cmd.replace("/opt/voiceclf", str(home)).replace("/var/log/voiceclf", str(logs)))
        assert stdin == "", f"a % cut the command: {cmd}"
        subprocess.run([env["SHELL"], "-c", command], input=stdin, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        schedules[re.search(r"-m jobs\.(\w+)", cmd).group(1)] = fields
    argv = {p.name.removeprefix("argv-jobs."): p.read_text().splitlines()[2:] for p in tmp_path.glob("argv-*")}
    assert argv.pop("score") == ["/srv/voiceclf/inbox", "--out", f"{home}/reports/report-2025-01-02.csv",
                                 "--segments", f"{home}/reports/turns-2025-01-02.csv", f"--min-confidence={env['VOICECLF_MIN_CONFIDENCE']}"]
    assert (home / "reports").is_dir()
    assert argv.pop("featurize") == ["/srv/voiceclf/corpus", "--out", f"{home}/features", "--feature-set", "mfcc_pitch,speaker_embedding"]
    if featurize_code:
        assert argv == {}, "train ran after a failed featurize"
    else:
        assert argv == {"train": ["--features", f"{home}/features"]}
    assert schedules["score"][2:] == ["*", "*", "*"], "score runs every night"
    assert schedules["featurize"][2:4] == ["*", "*"] and schedules["featurize"][4] != "*", "featurize + train run once a week"


def test_crontab_lines_are_well_formed(entries):
    for fields, cmd in entries:
        for field, (lo, hi) in zip(fields, FIELD_RANGES):
            assert valid_field(field, lo, hi), f"bad schedule field {field!r} in {fields}"
        # the entry points, not make: make exits 2 whatever the job's exit code was
        assert re.match(r"cd /\S+ && ", cmd) and ".venv/bin/python -m jobs." in cmd, cmd
        assert not re.search(r"\bmake\b", cmd), cmd
        assert re.search(r">> /\S+\.log 2>&1", cmd), f"stdout+stderr must be appended to a log file: {cmd}"
        assert 'echo "exit $?" >> ' in cmd, f"a failure must log the job's exit code: {cmd}"
        assert not UNESCAPED_PERCENT.search(cmd), f"unescaped % (cron would cut the command there): {cmd}"


@pytest.mark.skipif(not shutil.which("sh"), reason="no /bin/sh")
@pytest.mark.parametrize("code", [0, 3])
def test_crontab_lines_log_the_jobs_own_exit_code(entries, code, tmp_path):
    """Each line, run by sh in a stand-in checkout whose python exits ``code``: the log and cron's mail say "exit <code>"."""
    home, logs = tmp_path / "voiceclf", tmp_path / "log"
    (home / ".venv" / "bin").mkdir(parents=True)
    logs.mkdir()
    stub = home / ".venv" / "bin" / "python"
    stub.write_text(f'#!/bin/sh\necho "job $*" >&2\nexit {code}\n')
    stub.chmod(0o755)
    for _, cmd in entries:
        as_run = cmd.replace("\\%", "%").replace("/opt/voiceclf", str(home)).replace("/var/log/voiceclf", str(logs))
        proc = subprocess.run(["sh", "-c", as_run], capture_output=True, text=True, timeout=60)
        log = next(logs.glob("*.log")).read_text()
        assert "job -m jobs." in log
        if code:
            assert f"exit {code}" in log and f"exit {code}" in proc.stdout, (log, proc.stdout)
        else:
            assert "exit" not in log and proc.stdout == "", (log, proc.stdout)
        for f in logs.iterdir():
            f.unlink()


def test_commented_example_lines_escape_percent_too():
    """The `--wait` alternative in the comments must work when someone uncomments it."""
    examples = [line.lstrip("# ") for line in CRONTAB.read_text().splitlines()
                if re.match(r"#\s+[\d*][\d*,/-]*\s+[\d*][\d*,/-]*\s+\S+\s+\S+\s+\S+\s+\S", line)]
    assert examples, "expected a commented --wait example"
    assert any("--wait" in e for e in examples)
    for e in examples:
        (fields, cmd), = cron_entries(e)
        assert not UNESCAPED_PERCENT.search(cmd), e
        assert re.search(r">> /\S+\.log 2>&1", cmd), e


@pytest.mark.skipif(not shutil.which("sh"), reason="no /bin/sh")
def test_crontab_commands_are_valid_sh(entries):
    for _, cmd in entries:
        as_run = cmd.replace("\\%", "%")  # what cron hands to /bin/sh
        proc = subprocess.run(["sh", "-n", "-c", as_run], capture_output=True, text=True)
        assert proc.returncode == 0, f"{proc.stderr}\n{as_run}"


# ----------------------------------------------------------------------------- Airflow DAG
@pytest.fixture(scope="module")
def dag_tree() -> ast.Module:
    source = DAG_FILE.read_text()
    compile(source, str(DAG_FILE), "exec")
    return ast.parse(source)


def calls_named(tree: ast.AST, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == name]


def kwarg(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def text_of(node: ast.AST, tree: ast.Module) -> str:
    """All string constants under ``node``, module-level string names resolved: enough to check a command's text."""
    consts = {}
    for st in tree.body:
        if isinstance(st, ast.Assign) and len(st.targets) == 1 and isinstance(st.targets[0], ast.Name):
            consts[st.targets[0].id] = st.value
    out = []
    for n in ast.walk(node):
        if isinstance(n, ast.Constant) and isinstance(n.value, str):
            out.append(n.value)
        elif isinstance(n, ast.Name) and n.id in consts:
            out.append(text_of(consts[n.id], tree))
    return "".join(out)


def test_dag_imports_only_airflow_and_the_standard_library(dag_tree):
    modules = set()
    for n in ast.walk(dag_tree):
        if isinstance(n, ast.Import):
            modules |= {a.name for a in n.names}
        elif isinstance(n, ast.ImportFrom):
            modules.add(n.module or "")
    assert not {m for m in modules if m.split(".")[0] in ("voiceclf", "jobs")}, "Airflow workers may not have voiceclf installed"
    assert {m.split(".")[0] for m in modules} <= {"__future__", "os", "datetime", "pathlib", "airflow"}, modules
    assert any(isinstance(n, ast.ImportFrom) and n.module == "airflow" and any(a.name == "DAG" for a in n.names) for n in ast.walk(dag_tree))
    # BashOperator from both homes, one the fallback of the other (Airflow 2 and 3)
    tries = [n for n in ast.walk(dag_tree) if isinstance(n, ast.Try)]
    bash_homes = {n.module for t in tries for n in ast.walk(t) if isinstance(n, ast.ImportFrom) and any(a.name == "BashOperator" for a in n.names)}
    assert bash_homes == {"airflow.operators.bash", "airflow.providers.standard.operators.bash"}


# A real Airflow, in its own venv (its pins would fight the project's): loads the DAG file and renders every task's
# templated fields with Airflow's own rendering, for the context the test gives; prints what a worker would run.
AIRFLOW_VENV = Path(os.environ.get("AIRFLOW_VENV") or REPO / ".airflow-venv")
AIRFLOW_SCRIPT = """
import inspect, json, sys, warnings
from datetime import datetime, timezone
warnings.simplefilter("ignore")  # Airflow's deprecation chatter
from airflow.models import DagBag

folder, given = sys.argv[1], json.loads(sys.argv[2])
bag = DagBag(dag_folder=folder, **({"include_examples": False} if "include_examples" in inspect.signature(DagBag).parameters else {}))
dag = bag.dags.get("voiceclf")
out = {"import_errors": {k: str(v) for k, v in bag.import_errors.items()}, "tasks": {}}
if dag is not None:
    run = type("DagRun", (), {"run_after": datetime(2025, 1, 3, tzinfo=timezone.utc)})()
    # a trigger's conf updates the DAG's params, as Airflow does for a triggered run
    ctx = {**given["ctx"], "params": {**dict(dag.params), **given["conf"]}, "dag_run": run}
    out.update(dag_id=dag.dag_id, schedule=getattr(dag, "schedule", None), catchup=dag.catchup, max_active_runs=dag.max_active_runs,
               params=dict(dag.params), doc_md=dag.doc_md)
    for t in dag.tasks:
        t.render_template_fields(ctx)
        out["tasks"][t.task_id] = {"bash_command": t.bash_command, "env": t.env, "append_env": t.append_env, "cwd": t.cwd,
                                   "downstream": sorted(t.downstream_task_ids), "retries": t.retries, "retry_delay_s": t.retry_delay.total_seconds()}
print(json.dumps(out))
"""


def airflow_loaded(tmp_path: Path, conf: dict | None = None, **ctx) -> dict:
    """The DAG as a real Airflow loads it, each task's fields rendered for ``ctx`` and a trigger's ``conf``."""
    python = AIRFLOW_VENV / "bin" / "python"
    if not python.exists():
        pytest.skip(f"no Airflow at {AIRFLOW_VENV}: `make airflow-check` installs one and runs these tests")
    home = tmp_path / "airflow-home"  # airflow.cfg and its database land here, not in the repo
    env = {**os.environ, "AIRFLOW_HOME": str(home), "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__DAGS_FOLDER": str(DAG_FILE.parent),
           "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING", "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run([str(python), "-c", AIRFLOW_SCRIPT, str(DAG_FILE.parent), json.dumps({"ctx": ctx, "conf": conf or {}})],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    assert loaded["import_errors"] == {} and "dag_id" in loaded, loaded
    return loaded


def test_dag_loads_in_airflow_as_featurize_then_train_then_score(tmp_path):
    dag = airflow_loaded(tmp_path, ds="2025-01-02", var={"value": {}})
    assert dag["dag_id"] == "voiceclf" and dag["schedule"] is None and dag["catchup"] is False and dag["max_active_runs"] == 1
    assert set(dag["params"]) == {"data_dir", "recordings_dir", "grid_file", "features_dir", "report_path", "segments_path", "segments_format", "min_confidence"}
    tasks = dag["tasks"]
    assert {t: v["downstream"] for t, v in tasks.items()} == {"featurize": ["train"], "train": ["score"], "score": []}
    for task, t in tasks.items():
        assert t["retries"] == 2 and t["retry_delay_s"] == 600, task  # what handles a lock held by another run (exit 3)
        assert t["append_env"] is True and not t["cwd"], task  # cwd is a template only from Airflow 2.9
    doc = dag["doc_md"]
    assert "exit" in doc.lower() and "`3`" in doc and "retr" in doc.lower()


def dag_constants(tree: ast.Module) -> dict:
    """The DAG file's module-level constants that evaluate without Airflow (e.g. PARAMS_ENV, HOME), as loaded from its place."""
    ns: dict = {"__file__": str(DAG_FILE)}
    for st in tree.body:
        stdlib = isinstance(st, (ast.Import, ast.ImportFrom)) and not (getattr(st, "module", None) or "").startswith("airflow")
        if isinstance(st, ast.Assign) or stdlib:
            try:
                exec(compile(ast.Module(body=[st], type_ignores=[]), str(DAG_FILE), "exec"), ns)
            except Exception:  # needs Airflow, __file__ or the environment: not a plain constant
                pass
    return ns


def test_dag_tasks_run_in_the_voiceclf_home_the_variable_names_else_this_repo(dag_tree):
    """$VOICECLF_HOME renders to the Airflow Variable voiceclf_home when it is set, else to the repo holding the DAG; no task
    sets cwd=, which BashOperator renders as a template only from Airflow 2.9 (the DAG says 2.4+)."""
    jinja2 = pytest.importorskip("jinja2")
    consts = dag_constants(dag_tree)
    variables = type("Vars", (), {"get": lambda self, key, default=None: store.get(key, default)})()
    for op in calls_named(dag_tree, "BashOperator"):
        assert kwarg(op, "cwd") is None, ast.literal_eval(kwarg(op, "task_id"))
        for store, want in (({}, os.environ.get("VOICECLF_HOME") or str(REPO)), ({"voiceclf_home": "/srv/voiceclf"}, "/srv/voiceclf")):
            home = jinja2.Environment().from_string(consts[kwarg(op, "env").id]["VOICECLF_HOME"]).render(var={"value": variables})
            assert home == want, (ast.literal_eval(kwarg(op, "task_id")), store, home)


def test_dag_commands_call_the_project_entry_points(dag_tree):
    consts = dag_constants(dag_tree)
    used = set()
    for op in calls_named(dag_tree, "BashOperator"):
        task = ast.literal_eval(kwarg(op, "task_id"))
        cmd = text_of(kwarg(op, "bash_command"), dag_tree)
        assert 'cd -- "$VOICECLF_HOME"' in cmd, f"{task}: runs in the repo root"
        assert f".venv/bin/python -m jobs.{task} " in cmd, cmd
        # params are data: environment variables the command quotes, never text pasted into the shell
        assert "params." not in cmd and "{{" not in cmd and "{%" not in cmd, cmd
        assert ast.literal_eval(kwarg(op, "append_env")) is True, f"{task}: the job needs PATH, HOME, MLFLOW_TRACKING_URI, ..."
        env = consts[kwarg(op, "env").id]
        for var in re.findall(r"\$\{?(VOICECLF_\w+)", cmd):
            assert var in env and f'"${var}"' in cmd, (task, var, cmd)
            used |= set(re.findall(r"params\.(\w+)", env[var]))
    assert used == {"data_dir", "recordings_dir", "grid_file", "features_dir", "report_path", "segments_path", "segments_format", "min_confidence"}


def rendered_tasks(dag_tree, params: dict, **ctx) -> dict[str, tuple[str, dict]]:
    """task → (bash_command, env), rendered with plain Jinja as Airflow would."""
    jinja2 = pytest.importorskip("jinja2")
    from datetime import datetime

    jenv = jinja2.Environment(undefined=jinja2.StrictUndefined)
    run = type("DagRun", (), {"run_after": datetime(2025, 1, 3)})()
    consts = dag_constants(dag_tree)
    ctx.setdefault("var", {"value": {}})  # no Airflow Variable set
    out = {}
    for op in calls_named(dag_tree, "BashOperator"):
        render = lambda text: jenv.from_string(text).render(params=params, dag_run=run, **ctx)  # noqa: E731
        env = {k: render(v) for k, v in consts[kwarg(op, "env").id].items()}
        out[ast.literal_eval(kwarg(op, "task_id"))] = (render(text_of(kwarg(op, "bash_command"), dag_tree)), env)
    return out


def test_dag_templates_render(dag_tree):
    """With and without a logical date (`ds`), the report path gets the run's date."""
    (dag,) = calls_named(dag_tree, "DAG")
    params = ast.literal_eval(kwarg(dag, "params"))
    for ctx, day in (({"ds": "2025-01-02"}, "2025-01-02"), ({}, "2025-01-03")):
        tasks = rendered_tasks(dag_tree, params, **ctx)
        assert tasks["score"][1]["VOICECLF_REPORT"] == f"reports/report-{day}.csv", tasks["score"]
    assert tasks["featurize"][1]["VOICECLF_DATA_DIR"] == params["data_dir"]


def rendered_by(renderer: str, dag_tree, tmp_path: Path, params: dict, **ctx) -> dict[str, tuple[str, dict]]:
    """task → (bash_command, env) as ``renderer`` renders them: plain Jinja on the DAG file's text, or a real Airflow
    that loads it (``params`` then come as a trigger's conf)."""
    if renderer == "jinja":
        return rendered_tasks(dag_tree, params, **ctx)
    loaded = airflow_loaded(tmp_path, conf=params, **ctx)
    return {task: (t["bash_command"], t["env"]) for task, t in loaded["tasks"].items()}


@pytest.mark.skipif(not shutil.which("bash"), reason="no bash")
@pytest.mark.parametrize("renderer", ["jinja", "airflow"])
def test_dag_params_reach_the_jobs_as_data_never_as_shell_code(renderer, dag_tree, tmp_path):
    """Hostile trigger-time params, rendered (by Airflow itself when it is installed) and run by a real bash: each
    arrives as one argument, nothing runs."""
    marker = tmp_path / "ran"
    params = {
        "data_dir": f"demo/corpus$(touch {marker})",
        "recordings_dir": f"-inbox `touch {marker}`",
        "grid_file": f"g'; touch {marker}; '.toml",
        "features_dir": 'feat "x" $HOME',
        "report_path": f"reports/$(touch {marker})/report-{{ds}}.csv",
        "segments_path": f"turns/`touch {marker}`/turns-{{ds}}.rttm",
        "segments_format": f"rttm; touch {marker}",
        "min_confidence": f"0.9$(touch {marker})",
    }
    home = tmp_path / "home"
    (home / ".venv" / "bin").mkdir(parents=True)
    stub = home / ".venv" / "bin" / "python"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "argv-$2"\n')
    stub.chmod(0o755)
    for task, (cmd, env) in rendered_by(renderer, dag_tree, tmp_path, params, ds="2025-01-02", var={"value": {"voiceclf_home": str(home)}}).items():
        assert env["VOICECLF_HOME"] == str(home)
        proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    argv = {t: (home / f"argv-jobs.{t}").read_text().splitlines()[2:] for t in ("featurize", "train", "score")}
    assert argv["featurize"] == [f"--out={params['features_dir']}", "--feature-set=mfcc_pitch,speaker_embedding", "--", params["data_dir"]]
    assert argv["train"] == [f"--features={params['features_dir']}", f"--grid={params['grid_file']}"]
    report = f"reports/$(touch {marker})/report-2025-01-02.csv"
    turns = f"turns/`touch {marker}`/turns-2025-01-02.rttm"
    assert argv["score"] == [f"--out={report}", f"--min-confidence={params['min_confidence']}", f"--segments={turns}", f"--segments-format={params['segments_format']}", "--", params["recordings_dir"]]
    assert (home / report).parent.is_dir() and (home / turns).parent.is_dir() and not marker.exists()


def test_dag_score_writes_no_turns_when_segments_path_is_empty(dag_tree, tmp_path):
    home = tmp_path / "home"
    (home / ".venv" / "bin").mkdir(parents=True)
    stub = home / ".venv" / "bin" / "python"
    stub.write_text('#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a"; done > "argv-$2"\n')
    stub.chmod(0o755)
    params = {"data_dir": "d", "recordings_dir": "inbox", "grid_file": "g.toml", "features_dir": "f",
              "report_path": "reports/report-{ds}.csv", "segments_path": "", "segments_format": "csv", "min_confidence": 0.0}
    cmd, env = rendered_tasks(dag_tree, params, ds="2025-01-02", var={"value": {"voiceclf_home": str(home)}})["score"]
    proc = subprocess.run(["bash", "-c", cmd], cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (home / "argv-jobs.score").read_text().splitlines()[2:] == ["--out=reports/report-2025-01-02.csv", "--min-confidence=0.0", "--", "inbox"]
