"""`caravan` and `luigi` as a user runs them, from a subfolder of a project: one-line errors, quiet closed pipes,
promote by id, readable tables, and the root found from the nearest luigi.cfg."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ..tiny_models import make_dataset, make_evaluation, make_model

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
SIGNAL = {"s1": 1.0, "s2": 0.5}


def run(cwd: Path, *argv: str, tool: str = "caravan", shell: str | None = None, timeout: float = 120,
        **extra_env: str) -> subprocess.CompletedProcess[str]:
    """``tool argv…`` (or a shell line) in ``cwd``, with no caravan settings in the environment: what a user types."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARAVAN_", "LUIGI_CONFIG"))} | extra_env
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)  # the project's pipelines/ for `luigi --module pipelines.…`
    command: str | list[str] = shell if shell is not None else [str(BIN / tool), *argv]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                          shell=shell is not None, executable="/bin/bash" if shell is not None else None,
                          check=False)


def on_a_terminal(cwd: Path, *argv: str, columns: int) -> str:
    """What ``caravan argv…`` prints on a terminal ``columns`` wide (a pseudo-terminal as its stdout)."""
    import pty

    env = {k: v for k, v in os.environ.items() if not k.startswith(("CARAVAN_", "LUIGI_CONFIG"))}
    main, child = pty.openpty()
    proc = subprocess.Popen([str(BIN / "caravan"), *argv], cwd=cwd, stdout=child, stderr=subprocess.PIPE,
                            env={**env, "COLUMNS": str(columns)})
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(main)
    assert proc.wait(timeout=60) == 0, proc.stderr.read() if proc.stderr else ""
    return out.decode().replace("\r\n", "\n")


def one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode != 0, done
    err = done.stderr.strip()
    assert err.startswith("caravan") and "\n" not in err and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A project whose luigi.cfg sets relative roots, with a dataset, two models and an evaluation; the user
    works in a subfolder."""
    top = tmp_path_factory.mktemp("project")
    (top / "luigi.cfg").write_text("[caravan]\nartifact_root = store\npointer_root = pointers\n")
    (top / "notebooks" / "deep").mkdir(parents=True)
    root = str(top / "store")
    data = make_dataset(root, "d", SIGNAL, rows=600)
    a, b = (make_model(root, data, list(SIGNAL), name=f"num_leaves={n}") for n in (15, 63))
    evaluation = make_evaluation(root, a)
    return {"top": top, "cwd": top / "notebooks" / "deep", "a": a, "b": b, "eval": evaluation, "data": data}


def test_runs_from_a_subfolder_finds_the_project_root_and_prints_ids_in_full(project):
    done = run(project["cwd"], "runs")
    assert done.returncode == 0, done.stderr
    for artifact in (project["a"], project["b"], project["eval"]):
        assert artifact.id in done.stdout, "not a terminal: nothing cut"
    header = done.stdout.splitlines()[0].split()
    assert {"valid_auc", "test_auc", "ndcg@10"} <= set(header)
    line = next(x for x in done.stdout.splitlines() if project["eval"].id in x)
    assert "0.7000" in line, "the evaluation's test_auc shows in its own column"
    assert run(project["cwd"], "runs", "--wide", "--family", "TrainRanker").returncode == 0


def test_on_a_terminal_ids_keep_their_family_and_what_tells_them_apart(project):
    shown = on_a_terminal(project["cwd"], "runs", "--family", "TrainRanker", columns=110)
    lines = shown.strip().splitlines()
    assert max(len(line) for line in lines) <= 110, shown
    assert any("TrainRanker/…15" in line for line in lines) and any("TrainRanker/…63" in line for line in lines), \
        shown
    wide = on_a_terminal(project["cwd"], "runs", "--family", "TrainRanker", "--wide", columns=110)
    assert project["a"].id in wide and project["b"].id in wide


@pytest.mark.parametrize("family", ["../../..", "TrainRanker/../..", "/etc", ""])
def test_family_stays_inside_the_root(project, family):
    err = one_line_error(run(project["cwd"], "runs", "--family", family))
    assert "task family" in err


def test_a_root_that_does_not_exist_is_an_error(project, tmp_path):
    err = one_line_error(run(project["cwd"], "runs", "--root", str(tmp_path / "nope")))
    assert "does not exist" in err and "nope" in err
    lost = tmp_path / "elsewhere"
    lost.mkdir()
    err = one_line_error(run(lost, "runs"))
    assert "does not exist" in err and str(lost) in err, "outside any project: says where it looked"


def test_promote_takes_an_id_or_a_unique_part_and_says_what_matches(project):
    cwd, a, b = project["cwd"], project["a"], project["b"]
    assert "no artifact matches 'banana'" in one_line_error(run(cwd, "models", "promote", "ranker", "banana"))
    err = one_line_error(run(cwd, "models", "promote", "ranker", "TrainRanker"))
    assert "matches 2 artifacts" in err and a.id in err and b.id in err
    assert "no artifact given" in one_line_error(run(cwd, "models", "promote", "ranker", ""))

    done = run(cwd, "models", "promote", "ranker", "num_leaves=15")  # as the parameter reads (id: ~3D)
    assert done.returncode == 0, done.stderr
    assert a.uri in done.stdout
    current = run(cwd, "models", "current", "ranker")
    assert current.returncode == 0 and "None" not in current.stdout and "previous" not in current.stdout
    done = run(cwd, "models", "promote", "ranker", b.id, "--tolerance", "1")  # the full id
    assert done.returncode == 0, done.stderr
    current = run(cwd, "models", "current", "ranker")
    assert f"previous {a.id}" in current.stdout
    history = run(cwd, "models", "history", "ranker")
    assert history.returncode == 0 and a.id in history.stdout and b.id in history.stdout
    pointer_files = list((project["top"] / "pointers").rglob("current"))
    assert pointer_files, "the pointers live where the project's luigi.cfg says, not under the subfolder"


def test_history_of_an_unknown_model_is_an_error(project):
    assert "no model 'nosuchmodel'" in one_line_error(run(project["cwd"], "models", "history", "nosuchmodel"))


def test_usage_errors_are_one_line(project):
    assert "invalid int value" in one_line_error(run(project["cwd"], "runs", "--limit", "x"))
    assert "invalid choice" in one_line_error(run(project["cwd"], "bogus"))


def test_debug_shows_the_traceback(project):
    done = run(project["cwd"], "--debug", "models", "promote", "ranker", "banana")
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.parametrize("command", ["caravan runs", "caravan models history ranker", "caravan runs --json",
                                     "caravan models current ranker"])
def test_a_closed_pipe_ends_quietly(project, command):
    assert run(project["cwd"], "models", "promote", "ranker", project["a"].id, "--tolerance", "1").returncode == 0
    # `| true` closes the pipe before caravan (half a second to start) writes anything: the write always fails.
    done = run(project["cwd"], shell=f"{command} | true; {command} | head -1")  # noqa: S604 - pipes are the point
    assert "BrokenPipe" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert done.stderr == "" and len(done.stdout.splitlines()) == 1, done


@pytest.mark.parametrize(("args", "expected"), [
    (["TrainRanker", "--date", "2026-13-45"], "--date '2026-13-45'"),
    (["GridSearchRanker", "--date", "2026-11-22", "--grid", "[1,2]"], "grid must be a JSON object of lists"),
    (["GridSearchRanker", "--date", "2026-11-22", "--grid", '{"num_leaves": ["abc"]}'], "num_leaves"),
])
def test_luigi_ends_with_caravans_one_line_reason(project, args, expected):
    done = run(project["cwd"], "--module", "pipelines.ranker", *args, "--local-scheduler", tool="luigi")
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "caravan: " in last and expected in last, done.stderr
    assert "Traceback" not in done.stderr, "a value luigi or caravan refused is one line, not a traceback"


def test_caravan_debug_keeps_luigis_traceback(project):
    done = run(project["cwd"], "--module", "pipelines.ranker", "TrainRanker", "--date", "2026-13-45",
               "--local-scheduler", tool="luigi", CARAVAN_DEBUG="1")
    assert done.returncode != 0 and "Traceback" in done.stderr


@pytest.mark.parametrize("workers", ["1", "2"])  # 2: the task fails in a forked task process
def test_a_failed_task_ends_the_luigi_run_with_its_reason(project, workers):
    table = project["top"] / "t.parquet"
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"x": [float(i) for i in range(60)], "target": [i % 2 for i in range(60)]}), table)
    done = run(project["cwd"], "--module", "pipelines.tabular", "PrepareTable", "--dataset", str(table),
               "--label", "tagret", "--local-scheduler", "--workers", workers, tool="luigi")
    # (the exit code is the project's [retcode] section's; this luigi.cfg has none, so luigi's default 0)
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("caravan: PrepareTable failed:") and "label column 'tagret' is not in the table" in last, \
        done.stderr[-3000:]
    assert "failed for PrepareTable/" not in last, "the step's own line without its repeated artifact id"


def test_json_output_is_complete(project):
    done = run(project["cwd"], "runs", "--json")
    assert done.returncode == 0
    ids = {m["artifact_id"] for m in json.loads(done.stdout)}
    assert {project["a"].id, project["b"].id, project["eval"].id} <= ids
