"""rayjobs.search_lock: a second search driver on the same --out is refused while the first runs, and the lock
goes with the process that held it."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rayjobs import search_lock

HOLDER = """
import sys, time
from pathlib import Path
from rayjobs.search_lock import hold, releases_locks

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
