"""rayjobs.search.lock: a second search driver on the same --out is refused while the first runs, and the lock
goes with the process that held it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayjobs.search import lock as search_lock

HOLDER = """
import sys, time
from pathlib import Path
from rayjobs.search.lock import hold, releases_locks

@releases_locks
def search():
    hold(Path(sys.argv[1]))
    print("held", flush=True)
    time.sleep(120)

search()
"""


def _holder(out: Path) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_driver_is_refused_until_the_first_is_gone(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    first = _holder(out)
    try:
        with pytest.raises(
            search_lock.SearchLocked, match=rf"another search is running on {re.escape(str(out))} \(pid {first.pid} on "
        ):
            search_lock.releases_locks(search_lock.hold)(out)
    finally:
        first.kill()  # SIGKILL: no clean-up ran, the kernel drops the lock
        first.wait()
    search_lock.releases_locks(search_lock.hold)(out)  # taken and released again
    search_lock.releases_locks(search_lock.hold)(out)  # a call that returned left nothing held


def test_the_search_command_says_so_in_one_line_and_leaves_the_folder_alone(tmp_path, data_root):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("a finished trial's files")
    first = _holder(out)
    try:
        env = {**os.environ, "RAY_ADDRESS": ""}
        env.pop("RAY_ADDRESS")
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, "-m", "rayjobs.search", "--preset", "smoke", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        took = time.monotonic() - t0
    finally:
        first.kill()
        first.wait()
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("INFO")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert lines == [lines[0]] and lines[0].startswith(f"error: another search is running on {out} (pid {first.pid}")
    assert sorted(p.name for p in out.iterdir()) == [".search.lock", "keep.txt"], "nothing else written"
    assert (out / "keep.txt").read_text() == "a finished trial's files"
    assert took < 120  # refused before any Ray or trial started


STUDY_HOLDER = """
import os, sys, time
from rayjobs.search.lock import hold_study, releases_locks

@releases_locks
def search():
    hold_study(os.environ["STUDY_URL"], sys.argv[1], "the test database")
    print("held", flush=True)
    time.sleep(120)

search()
"""


def _study_holder(url: str, study: str) -> subprocess.Popen:
    env = {**os.environ, "STUDY_URL": url}
    p = subprocess.Popen([sys.executable, "-c", STUDY_HOLDER, study], stdout=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "held"
    return p


def _take(url: str, study: str) -> None:
    search_lock.releases_locks(search_lock.hold_study)(url, study, "the test database")


# "lt" hashes to a negative lock key, "a" to a positive one: pg_locks shows a key as two unsigned halves
@pytest.mark.parametrize("study", ["lt", "a"])
def test_a_second_driver_on_the_same_study_is_refused_from_any_folder_until_the_first_is_gone(postgres_url, study):
    assert (search_lock.study_lock_key(study) < 0) == (study == "lt")
    first = _study_holder(postgres_url, study)
    try:
        with pytest.raises(search_lock.SearchLocked) as e:
            _take(postgres_url, study)
        host = __import__("socket").gethostname()
        assert str(e.value).startswith(
            f"study '{study}' in the test database is being searched by twohead search pid {first.pid} on {host} from "
        )
        _take(postgres_url, "other")  # another study on the same server is free
    finally:
        first.kill()  # SIGKILL: no clean-up ran; the server drops the lock with the connection
        first.wait()
    deadline = time.monotonic() + 30
    while True:
        try:
            _take(postgres_url, study)
            break
        except search_lock.SearchLocked:
            assert time.monotonic() < deadline, "the lock of a killed driver was never dropped"
            time.sleep(0.2)
    _take(postgres_url, study)  # a call that returned left nothing held


def test_the_search_command_refuses_a_study_another_driver_searches_in_one_line(tmp_path, postgres_url, data_root):
    first = _study_holder(postgres_url, "smoke-lock")
    out = tmp_path / "elsewhere"
    try:
        env = {**os.environ, "STUDY_URL": postgres_url}
        env.pop("RAY_ADDRESS", None)
        cmd = [sys.executable, "-m", "rayjobs.search", "--preset", "smoke", "--out", str(out), "--study-name", "smoke-lock"]
        r = subprocess.run([*cmd, "--storage", "env:STUDY_URL"], capture_output=True, text=True, timeout=300, env=env)
    finally:
        first.kill()
        first.wait()
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("INFO")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith(
        f"error: study 'smoke-lock' in env:STUDY_URL is being searched by twohead search pid {first.pid} on "
    ), lines
    assert postgres_url.split("@")[0] not in r.stderr  # the password never shows
