"""The dashboard command the search prints serves its study: a real optuna-dashboard on 127.0.0.1 (Ray-free).

The study is made the way the driver makes it (rayjobs.search.study.open_study on the default SQLite URL) and filled
with trials drawn by the preset's define-by-run space through Optuna's ask/tell; the test then starts the exact
command of ``dashboard_command`` (plus host/port) from this venv and reads the study back over HTTP. A Pareto
search's study is served with two directions, its objectives' names and its Pareto front (the dashboard's
``best_trials``, from which it draws the front).
"""

from __future__ import annotations

import json
import shlex
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import optuna
import pytest

from rayjobs.search.report import dashboard_command
from rayjobs.search.space import load_search_space
from rayjobs.search.study import default_storage_url, open_study

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> dict:
    deadline, last = time.time() + timeout, None
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"optuna-dashboard exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                return json.loads(r.read())
        except OSError as exc:  # not listening yet
            last = exc
            time.sleep(0.3)
    raise AssertionError(f"{url} did not answer in {timeout:.0f}s: {last}")


@pytest.fixture
def smoke_study(tmp_path):
    spec = load_search_space("smoke")
    url = default_storage_url(tmp_path, spec.study_name)
    study = open_study(url, spec)
    for value in (41.5, 47.25, 44.0):
        trial = study.ask()
        spec.suggest(trial)
        trial.set_user_attr("test_top1", value - 1.0)
        study.tell(trial, value)
    return spec, url


def _serve(url: str, tmp_path: Path):
    """Start the exact printed command (plus host and port); yields its base URL and process."""
    argv = shlex.split(dashboard_command(url))
    assert argv == ["optuna-dashboard", url] and url.startswith("sqlite:////")
    exe = Path(sys.executable).parent / argv[0]  # the venv's console script
    port = _free_port()
    log = open(tmp_path / "dashboard.log", "w")
    proc = subprocess.Popen(
        [str(exe), *argv[1:], "--host", "127.0.0.1", "--port", str(port), "--quiet"],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return f"http://127.0.0.1:{port}", proc, log


def _stop(proc: subprocess.Popen, log) -> None:
    proc.send_signal(signal.SIGTERM)  # only the server this test started
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    log.close()


def test_dashboard_lists_the_search_study(smoke_study, tmp_path):
    spec, url = smoke_study
    base, proc, log = _serve(url, tmp_path)
    try:
        studies = _get_json(f"{base}/api/studies", proc=proc)["study_summaries"]
        (entry,) = [s for s in studies if s["study_name"] == spec.study_name]
        assert entry["directions"] == ["maximize"]
        detail = _get_json(f"{base}/api/studies/{entry['study_id']}?after=0", proc=proc)
        trials = detail["trials"]
        assert [t["values"] for t in trials] == [[41.5], [47.25], [44.0]]
        assert {p["name"] for p in trials[0]["params"]} == {"u", "alpha", "lambda", "clustering"}
        assert {a["key"] for a in trials[1]["user_attrs"]} >= {"test_top1"}
    finally:
        _stop(proc, log)


def test_dashboard_shows_the_pareto_front_of_a_pareto_search(tmp_path):
    spec = load_search_space("smoke-pareto")
    url = default_storage_url(tmp_path, spec.study_name)
    study = open_study(url, spec)
    # (top-1, worst class): (50, 10) is dominated by (52, 20); the front is the other three
    for values in ((60.0, 0.0), (52.0, 20.0), (50.0, 10.0), (45.0, 30.0)):
        trial = study.ask()
        spec.suggest(trial)
        trial.set_user_attr("chosen_variant", "max")
        study.tell(trial, list(values))
    pruned = study.ask()
    spec.suggest(pruned)
    study.tell(pruned, state=optuna.trial.TrialState.PRUNED)  # no values: the dashboard must still serve the study
    base, proc, log = _serve(url, tmp_path)
    try:
        studies = _get_json(f"{base}/api/studies", proc=proc)["study_summaries"]
        (entry,) = [s for s in studies if s["study_name"] == spec.study_name]
        assert entry["directions"] == ["maximize", "maximize"]
        detail = _get_json(f"{base}/api/studies/{entry['study_id']}?after=0", proc=proc)
        assert detail["objective_names"] == ["val_top1", "val_worst_class"]
        assert sorted(t["number"] for t in detail["best_trials"]) == [0, 1, 3]
        assert [t["state"] for t in detail["trials"]] == ["Complete"] * 4 + ["Pruned"]
    finally:
        _stop(proc, log)
