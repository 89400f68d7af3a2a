"""Executing the planned runs: each is ``python -m twohead.cli train --config <resolved yaml>`` (that is,
:func:`twohead.loop.fit`) in its own process, up to ``concurrent`` at once on one device, in plan order, within an
optional time budget. A failing run is reported with the most telling line of its log and never stops the others;
with ``--ray`` the same commands run as Ray tasks holding 1/N of a GPU each.
"""

from __future__ import annotations

import json
import logging
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import twohead
from twohead import atomic

from .plan import RunSpec
from .results import StaleResultError, finished_result, run_dir

log = logging.getLogger("rayjobs.reproduce")

__all__ = ["RunStatus", "LocalExecutor", "RayExecutor", "Runner", "Interrupted"]

# The folder that holds the twohead package (a checkout or site-packages): child processes import the same code.
PACKAGE_ROOT = str(Path(twohead.__file__).resolve().parents[1])


@dataclass
class RunStatus:
    spec: RunSpec
    state: str = "pending"  # pending | done | failed | running | skipped | interrupted
    reason: str = ""
    result: dict | None = None
    started: float | None = None
    seconds: float | None = None  # process wall time of a run launched here


class LocalExecutor:
    """Runs each command as a child process (its own session, so a signal to it reaches only that run)."""

    def start(self, cmd: list[str], env: dict[str, str], log_path: Path):
        f = open(log_path, "ab")
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        f.close()
        return proc

    def poll(self, handle) -> int | None:
        return handle.poll()

    def stop(self, handle) -> None:
        if handle.poll() is None:
            handle.terminate()
            try:
                handle.wait(timeout=20)
            except subprocess.TimeoutExpired:
                handle.kill()
                handle.wait()


def _ray_run(cmd: list[str], env: dict[str, str], log_path: str, cwd: str) -> int:
    """Body of the Ray task: the same command as the local executor, on whichever node Ray picked."""
    with open(log_path, "ab") as f:
        return subprocess.run(
            [sys.executable, *cmd[1:]], env={**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT, cwd=cwd
        ).returncode


class RayExecutor:
    """The same runs as Ray tasks: each holds 1/``concurrent`` of a GPU (or one CPU without GPUs), so Ray packs
    ``concurrent`` runs per GPU across the cluster. ``--work`` and ``--out`` must be on storage every node sees."""

    def __init__(self, concurrent: int, gpu: bool, address: str | None = None):
        import ray

        if not ray.is_initialized():
            from rayjobs.cluster.connect import connect

            # --ray-address, else RAY_ADDRESS, else a local Ray; an address that does not answer is a one-line error.
            connect(address or None, log_to_driver=False, include_dashboard=False)
        self.ray = ray
        opts = {"num_gpus": 1.0 / concurrent, "num_cpus": 1} if gpu else {"num_cpus": 1}
        self.task = ray.remote(max_retries=0, **opts)(_ray_run)

    def start(self, cmd, env, log_path):
        return self.task.remote(cmd, env, str(log_path), os.getcwd())

    def poll(self, handle) -> int | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            return int(self.ray.get(handle))
        except Exception as e:  # noqa: BLE001 - a lost worker is a failed run, not a failed table
            log.warning("ray task failed: %s", e)
            return -1

    def stop(self, handle) -> None:
        self.ray.cancel(handle, force=True)


class Interrupted(Exception):
    """SIGTERM / SIGINT reached the driver: stop the running runs, keep what finished."""


def _last_error(log_path: Path) -> str:
    """The most telling line of a failed run's log: twohead's one-line error, else the last exception line."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "no log"
    for ln in reversed(lines):
        if ln.startswith("twohead: error:"):
            return ln.removeprefix("twohead: error:").strip()
    for ln in reversed(lines):
        if "Error" in ln or "Exception" in ln:
            return ln[-300:]
    return lines[-1][-300:] if lines else "empty log"


class Runner:
    """Launches pending runs up to ``concurrent`` at a time, in plan order, within an optional time budget."""

    def __init__(
        self,
        specs: Sequence[RunSpec],
        *,
        out: Path,
        work: Path,
        concurrent: int = 1,
        time_budget: float | None = None,
        executor=None,
        commit: str = "unknown",
        on_update: Callable[[Runner], None] | None = None,
        poll_s: float = 1.0,
        threads_per_run: int | None = None,
    ):
        self.specs = list(specs)
        self.out, self.work = Path(out), Path(work)
        self.concurrent = max(1, int(concurrent))
        self.time_budget = time_budget
        self.executor = executor or LocalExecutor()
        self.commit = commit
        self.on_update = on_update
        self.poll_s = poll_s
        self.threads_per_run = threads_per_run or max(1, (os.cpu_count() or 1) // self.concurrent)
        self.status: dict[str, RunStatus] = {s.name: RunStatus(s) for s in self.specs}
        self.t0 = time.monotonic()

    # -- bookkeeping -----------------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Mark runs that already finished (their JSON exists) as done."""
        for st in self.status.values():
            if st.state in ("pending", "interrupted"):
                try:
                    res = finished_result(st.spec, self.out, self.work, {"commit": self.commit})
                except StaleResultError as e:
                    st.state, st.reason = "failed", str(e)
                    continue
                if res is not None:
                    st.state, st.result = "done", res

    def durations(self) -> list[float]:
        return [st.seconds for st in self.status.values() if st.state == "done" and st.seconds]

    def estimate(self) -> float | None:
        """Expected wall time of the next run: the median of runs finished here (same packing, same device)."""
        d = self.durations()
        return statistics.median(d) if d else None

    def _command(self, spec: RunSpec) -> tuple[list[str], dict[str, str], Path]:
        cfg = spec.config(self.work)
        rd = run_dir(self.work, spec)
        plans, logs = rd.parent / "plans", rd.parent / "logs"
        plans.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        yaml_path = plans / f"{spec.name}.yaml"
        atomic.write_text(yaml_path, cfg.to_yaml())
        atomic.write_text(
            plans / f"{spec.name}.launch.json",
            json.dumps(
                {
                    "commit": self.commit,
                    "concurrent": self.concurrent,
                    "launched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                }
            ),
        )
        env = {
            "PYTHONPATH": os.pathsep.join([PACKAGE_ROOT, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
            "TQDM_DISABLE": "1",
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(self.threads_per_run)),
        }
        cmd = [sys.executable, "-m", "twohead.cli", "train", "--config", str(yaml_path)]
        return cmd, env, logs / f"{spec.name}.log"

    def _finish(self, st: RunStatus, rc: int, log_path: Path) -> None:
        st.seconds = time.monotonic() - (st.started or self.t0)
        if rc == 0:
            try:
                res = finished_result(st.spec, self.out, self.work, {"commit": self.commit, "process_s": st.seconds})
            except StaleResultError as e:
                res, st.reason = None, str(e)
            if res is not None:
                st.state, st.result = "done", res
                log.info("done %s: top-1 %.2f (%.0f s)", st.spec.name, res["top1"], st.seconds)
                return
            st.reason = st.reason or "exited 0 but wrote no metrics.json"
        else:
            st.reason = f"exit {rc}: {_last_error(log_path)}"
        st.state = "failed"
        log.warning("FAILED %s: %s (log: %s)", st.spec.name, st.reason, log_path)

    # -- the loop ---------------------------------------------------------------------------------------------
    def run(self) -> dict[str, RunStatus]:
        self.refresh()
        pending = [self.status[s.name] for s in self.specs if self.status[s.name].state in ("pending", "interrupted")]
        running: dict[str, tuple[RunStatus, Any, Path]] = {}
        try:
            while pending or running:
                while pending and len(running) < self.concurrent:
                    elapsed = time.monotonic() - self.t0
                    est = self.estimate()
                    if self.time_budget is not None and (
                        elapsed >= self.time_budget or (est is not None and elapsed + est > self.time_budget)
                    ):
                        for st in pending:
                            st.state = "skipped"
                            st.reason = (
                                f"time budget {self.time_budget:.0f} s (elapsed {elapsed:.0f} s, a run takes ~{est or 0:.0f} s)"
                            )
                        pending.clear()
                        break
                    st = pending.pop(0)
                    cmd, env, log_path = self._command(st.spec)
                    st.state, st.started = "running", time.monotonic()
                    running[st.spec.name] = (st, self.executor.start(cmd, env, log_path), log_path)
                    log.info("launched %s (%d running, %d pending)", st.spec.name, len(running), len(pending))
                changed = False
                for name, (st, handle, log_path) in list(running.items()):
                    rc = self.executor.poll(handle)
                    if rc is not None:
                        del running[name]
                        self._finish(st, rc, log_path)
                        changed = True
                if changed and self.on_update:
                    self.on_update(self)
                if running:
                    time.sleep(self.poll_s)
        finally:
            for st, handle, _log in running.values():
                self.executor.stop(handle)
                st.state, st.reason = "interrupted", "stopped before it finished (its checkpoint resumes it)"
        return self.status
