"""Reproduce the paper's CIFAR-10-LT tables: many (method, imbalance, seed) runs packed on one device, resumable,
summarised as Markdown next to the published numbers.

    python -m rayjobs.reproduce --table cifar10-lt --dry-run                     # the plan, in launch order
    python -m rayjobs.reproduce --table cifar10-lt --concurrent 4 --time-budget 600
    python -m rayjobs.reproduce --table cifar10-lt --table cifar10-lt-ablation --report-only
    ray job submit -- python -m rayjobs.reproduce --table cifar10-lt --ray        # same runs as Ray tasks

Tables (:data:`TABLES`):

* ``cifar10-lt`` -- paper Table 1 on CIFAR-10-LT. Rows CE, Focal, CB, LDAM-DRW, Mixup, Ours (``twohead``) and
  Ours-Full (``twohead_full``: two heads + mixup + deferred class re-weighting); columns imbalance 100, 50, 10.
* ``cifar10-lt-ablation`` -- paper Table 4 (neither head / FBH only / CDH only / both). The paper's ablation is on
  CIFAR-100-LT and Tiny-ImageNet-LT; the CIFAR-100 *train* split is not available here, so it runs on
  CIFAR-10-LT and shows the paper's CIFAR-100 numbers as context only (no difference column).

Every cell is the mean +- sample std over seeds of the **final-epoch** test top-1 (never the best epoch over
test), beside the paper's number and the difference. The CE and two-head runs at imbalance 100 also give the
paper's Fig. 3 (per-class recall and per-class classifier weight norms, CE vs two-head).

How runs are executed. Each run is ``python -m twohead.cli train --config <resolved yaml>`` (that is,
:func:`twohead.loop.fit`) in its own process: up to ``--concurrent`` at once on the one GPU (ResNet-32 at batch
128 leaves most of an H100 idle, so packing runs is what fills it), in priority order (imbalance 100 CE / Ours /
Ours-Full for every seed first, seed-major, then the other rows, then the other imbalances). A run that fails is
reported with the last line of its log and never stops the others. Nothing here imports Ray unless ``--ray`` is
given (the GPU machine has no Ray), in which case the same commands run as Ray tasks holding 1/N of a GPU.

Files. Full run folders (checkpoints, history, plots) go to ``--work`` (default ``runs/reproduce``, git-ignored):
``<work>/<dataset>/<run>/``, with ``plans/<run>.yaml`` (the resolved config) and ``logs/<run>.log`` beside them.
The small per-run JSON meant to be committed goes to ``--out`` (default ``results``):
``<out>/<dataset>/<run>.json`` (config, top-1, per-class recall, many/medium/few, weight norms, card, torch,
wall time, epochs, commit); the tables go to ``<out>/<table>.md`` and Fig. 3 to
``<out>/<dataset>/fig3-imb100.png``. Both are rewritten after every finished run (and ``--archive`` re-packs
``--out`` into one tar.gz), so whatever finished before a time limit is on disk.

Resume. A run is finished when ``<out>/<dataset>/<run>.json`` exists with the same config, or
``<work>/<dataset>/<run>/metrics.json`` does (its JSON is then derived); finished runs are never relaunched, and
an unfinished one resumes from its last checkpoint (``fit`` does that). Run names are
``<method>-imb<beta>-s<seed>``; any ``--epochs`` or ``--set`` that changes results adds a suffix
(``-e<E>``, ``-<hash>``), so a shortened or modified run never mixes with the paper-recipe runs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from twohead.config import METHODS, ConfigError, TrainConfig, load_config

from rayjobs import paper

log = logging.getLogger("rayjobs.reproduce")

__all__ = [
    "TableSpec",
    "TABLES",
    "RunSpec",
    "RunStatus",
    "plan_runs",
    "finished_result",
    "slim_result",
    "Runner",
    "render_table",
    "write_report",
    "fig3",
    "main",
]

REPO = Path(__file__).resolve().parents[1]

# Keys the plan sets itself: --set must not override them (use --methods / --imbalances / --seeds / --work).
RESERVED = {"method.name", "data.imbalance", "optim.seed", "data.dataset", "run.out", "run.name"}
# Keys that do not change a run's results: they neither rename the run nor count as a deviation.
NO_RESULT_EFFECT = {"data.root", "data.num_workers", "data.device_resident", "optim.device", "run.progress",
                    "run.plots", "run.checkpoint_every", "run.resume", "run.eval_every"}


# ----------------------------------------------------------------------------------------------------------
# What to run
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    kind: str  # "table1" | "ablation"
    dataset: str  # data.dataset of every run
    preset: str  # load_config preset
    methods: tuple[str, ...]  # rows, in print order
    core: tuple[str, ...]  # rows launched first
    imbalances: tuple[float, ...] = (100.0, 50.0, 10.0)


TABLES: dict[str, TableSpec] = {
    "cifar10-lt": TableSpec(
        name="cifar10-lt",
        title="CIFAR-10-LT: paper Table 1, reproduced",
        kind="table1",
        dataset="cifar10-lt",
        preset="cifar10-lt",
        methods=("ce", "focal", "cb", "ldam_drw", "mixup", "twohead", "twohead_full"),
        core=("ce", "twohead", "twohead_full"),
    ),
    "cifar10-lt-ablation": TableSpec(
        name="cifar10-lt-ablation",
        title="Two-head ablation (paper Table 4), run on CIFAR-10-LT",
        kind="ablation",
        dataset="cifar10-lt",
        preset="cifar10-lt",
        methods=("ce", "fbh_only", "cdh_only", "twohead"),
        core=("ce", "twohead"),
    ),
}

METHOD_LABELS = {
    "ce": "CE", "focal": "Focal", "cb": "CB", "cb_focal": "CB+Focal", "ldam": "LDAM", "ldam_drw": "LDAM-DRW",
    "mixup": "Mixup", "twohead": "Ours (two-head)", "twohead_full": "Ours-Full (two-head + mixup + re-weighting)",
    "fbh_only": "FBH only", "cdh_only": "CDH only",
}


@dataclass(frozen=True)
class RunSpec:
    """One (method, imbalance, seed) run of a table, with the overrides that define it."""

    dataset: str
    preset: str
    method: str
    imbalance: float
    seed: int
    tag: str  # "" for the paper recipe, else "e<E>" and/or a hash of the result-changing overrides
    overrides: tuple[tuple[str, Any], ...]  # applied after the preset (schedule scaling and --set values)
    priority: tuple = ()
    sets: tuple[tuple[str, Any], ...] = ()  # the --set values alone (named in the table's notes)

    @property
    def name(self) -> str:
        base = f"{self.method}-imb{self.imbalance:g}-s{self.seed}"
        return f"{base}-{self.tag}" if self.tag else base

    def config(self, work: Path) -> TrainConfig:
        """The validated config of this run, writing into ``work/<dataset>/<name>``."""
        ov: dict[str, Any] = dict(self.overrides)
        ov.update({"method.name": self.method, "data.imbalance": self.imbalance, "optim.seed": self.seed,
                   "run.out": str(Path(work).resolve() / self.dataset), "run.name": self.name})
        return load_config(preset=self.preset, overrides=ov)


def _parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like section.key=value")
        k, v = (s.strip() for s in item.split("=", 1))
        if k in RESERVED:
            raise ConfigError(f"--set {k} is chosen by the plan; use --methods / --imbalances / --seeds / --work instead")
        try:
            out[k] = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError:
            out[k] = v
    return out


def _scaled_schedule(base: TrainConfig, epochs: int, user: Mapping[str, Any]) -> dict[str, Any]:
    """``--epochs E``: the paper's 200-epoch schedule shrunk (or stretched) proportionally -- milestones, warm-up and
    the deferred re-weighting epoch -- unless the user set those keys."""
    e0 = base.optim.epochs
    out: dict[str, Any] = {"optim.epochs": epochs}
    if epochs == e0:
        return out
    f = epochs / e0
    if "optim.milestones" not in user:
        out["optim.milestones"] = sorted({max(1, round(m * f)) for m in base.optim.milestones if max(1, round(m * f)) < epochs})
    if "optim.warmup_epochs" not in user:
        w = round(base.optim.warmup_epochs * f)
        out["optim.warmup_epochs"] = w if w < epochs else 0
    if "method.drw_epoch" not in user:
        out["method.drw_epoch"] = round(base.method.drw_epoch * f)
    return out


def _tag(epochs: int | None, base_epochs: int, user: Mapping[str, Any]) -> str:
    parts = []
    if epochs is not None and epochs != base_epochs:
        parts.append(f"e{epochs}")
    changing = {k: user[k] for k in sorted(user) if k not in NO_RESULT_EFFECT}
    if changing:
        parts.append(hashlib.sha1(json.dumps(changing, sort_keys=True, default=str).encode()).hexdigest()[:6])
    return "-".join(parts)


def plan_runs(
    tables: Sequence[str],
    *,
    methods: Sequence[str] | None = None,
    imbalances: Sequence[float] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    sets: Sequence[str] = (),
    work: str | Path = "runs/reproduce",
) -> list[RunSpec]:
    """The runs of ``tables`` (deduplicated: the ablation's CE and two-head rows are Table 1's), in launch order.

    Order: per table (in the order given), the table's core rows at its first imbalance, then its other rows there,
    then the core rows at the other imbalances, then the rest; inside each tier seed-major (every method's seed 0
    before any seed 1), so a run cut short by a time budget still covers every important cell once.
    Every run's config is built and validated here: a bad ``--set`` fails before anything is launched.
    """
    if not tables:
        raise ConfigError("name at least one --table; known: " + ", ".join(TABLES))
    for t in tables:
        if t not in TABLES:
            raise ConfigError(f"--table {t!r} is unknown; known: {', '.join(TABLES)}")
    if methods is not None:
        for m in methods:
            if m not in METHODS:
                raise ConfigError(f"--methods {m!r} is unknown; known: {', '.join(METHODS)}")
    if not seeds:
        raise ConfigError("--seeds is empty")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs {epochs} must be >= 1")
    user = _parse_sets(sets)
    out: dict[str, RunSpec] = {}
    for ti, tname in enumerate(tables):
        t = TABLES[tname]
        base = load_config(preset=t.preset)
        ov = dict(user)
        if epochs is not None:
            ov.update(_scaled_schedule(base, epochs, user))
        tag = _tag(epochs, base.optim.epochs, user)
        rows = tuple(methods) if methods is not None else t.methods
        imbs = tuple(float(b) for b in (imbalances if imbalances is not None else t.imbalances))
        for ii, b in enumerate(imbs):
            for mi, m in enumerate(rows):
                tier = 2 * (ii > 0) + (m not in t.core)
                for s in seeds:
                    spec = RunSpec(t.dataset, t.preset, m, b, int(s), tag, tuple(sorted(ov.items())),
                                   (ti, tier, int(s), ii, mi), tuple(sorted(user.items())))
                    if spec.name not in out:
                        spec.config(Path(work))  # validate now
                        out[spec.name] = spec
    return sorted(out.values(), key=lambda r: r.priority)


# ----------------------------------------------------------------------------------------------------------
# Results on disk
# ----------------------------------------------------------------------------------------------------------
def _comparable(cfg: Mapping[str, Any]) -> dict:
    """The part of a config dict that decides the result (no output paths, data location or device choice)."""
    d = json.loads(json.dumps(cfg))
    d.pop("run", None)
    for k in NO_RESULT_EFFECT:
        sec, key = k.split(".")
        d.get(sec, {}).pop(key, None)
    return d


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


def git_commit(repo: Path = REPO) -> str:
    """``$TWOHEAD_COMMIT``, else ``git rev-parse HEAD`` (``+dirty`` with uncommitted changes to tracked files),
    else ``unknown`` (the GPU machine gets a copy of the tree without ``.git``)."""
    env = os.environ.get("TWOHEAD_COMMIT")
    if env:
        return env
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=repo, capture_output=True, timeout=10).returncode != 0
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _card(metrics: Mapping[str, Any]) -> str:
    if metrics.get("gpu"):
        return str(metrics["gpu"])
    threads = metrics.get("cpu_threads")
    return f"CPU ({platform.machine()}{f', {threads} threads' if threads else ''})"


def slim_result(metrics: Mapping[str, Any], cfg: TrainConfig, extra: Mapping[str, Any] | None = None) -> dict:
    """The committed per-run JSON: what a table or Fig. 3 needs plus provenance; no checkpoints, no confusion."""
    cfg_d = cfg.to_dict()
    cfg_d.pop("run", None)
    cfg_d["data"].pop("root", None)
    keys = ("run", "dataset", "method", "imbalance", "seed", "epochs", "top1", "many", "medium", "few", "ece",
            "per_class_recall", "class_counts", "weight_norms", "num_clusters", "val", "wall_s", "train_img_per_s",
            "device", "torch")
    out = {k: metrics.get(k) for k in keys}
    out["card"] = _card(metrics)
    out.update(dict(extra or {}))
    out["config"] = cfg_d
    return out


def slim_path(out: Path, spec: RunSpec) -> Path:
    return Path(out) / spec.dataset / f"{spec.name}.json"


def run_dir(work: Path, spec: RunSpec) -> Path:
    return Path(work).resolve() / spec.dataset / spec.name


class StaleResultError(RuntimeError):
    """A result file of this run name holds a different config (the recipe changed since): never overwritten."""


def finished_result(spec: RunSpec, out: Path, work: Path, extra: Mapping[str, Any] | None = None) -> dict | None:
    """The run's slim JSON if it finished (from ``out``, or derived from ``work``'s metrics.json and saved to
    ``out``), else None. Raises :class:`StaleResultError` when ``out`` holds this name with another config."""
    cfg = spec.config(work)
    want = _comparable(cfg.to_dict())
    sp = slim_path(out, spec)
    if sp.is_file():
        d = json.loads(sp.read_text())
        if _comparable(d.get("config", {})) != want:
            raise StaleResultError(f"{sp} holds run {spec.name} with a different config; move it away to rerun")
        return d
    rd = run_dir(work, spec)
    mfile = rd / "metrics.json"
    if not mfile.is_file():
        return None
    import yaml

    cfile = rd / "config.yaml"
    if not cfile.is_file() or _comparable(yaml.safe_load(cfile.read_text())) != want:
        raise StaleResultError(f"{rd} holds run {spec.name} with a different config; move it away to rerun")
    metrics = json.loads(mfile.read_text())
    if int(metrics.get("epochs", -1)) != cfg.optim.epochs:
        return None
    meta = dict(extra or {})
    side = rd.parent / "plans" / f"{spec.name}.launch.json"
    if side.is_file():  # what was true when the run was launched (commit, packing) beats what is true now
        meta.update(json.loads(side.read_text()))
    d = slim_result(metrics, cfg, meta)
    _atomic_write(sp, json.dumps(d, indent=1))
    return d


# ----------------------------------------------------------------------------------------------------------
# Executing runs
# ----------------------------------------------------------------------------------------------------------
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
        proc = subprocess.Popen(cmd, env={**os.environ, **env}, stdout=f, stderr=subprocess.STDOUT, cwd=REPO,
                                start_new_session=True)
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
        return subprocess.run([sys.executable, *cmd[1:]], env={**os.environ, **env}, stdout=f,
                              stderr=subprocess.STDOUT, cwd=cwd).returncode


class RayExecutor:
    """The same runs as Ray tasks: each holds 1/``concurrent`` of a GPU (or one CPU without GPUs), so Ray packs
    ``concurrent`` runs per GPU across the cluster. ``--work`` and ``--out`` must be on storage every node sees."""

    def __init__(self, concurrent: int, gpu: bool, address: str | None = None):
        import ray

        if not ray.is_initialized():
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or None, log_to_driver=False)
        self.ray = ray
        opts = {"num_gpus": 1.0 / concurrent, "num_cpus": 1} if gpu else {"num_cpus": 1}
        self.task = ray.remote(max_retries=0, **opts)(_ray_run)

    def start(self, cmd, env, log_path):
        return self.task.remote(cmd, env, str(log_path), str(REPO))

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


class _Interrupted(Exception):
    pass


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

    def __init__(self, specs: Sequence[RunSpec], *, out: Path, work: Path, concurrent: int = 1,
                 time_budget: float | None = None, executor=None, commit: str = "unknown",
                 on_update: Callable[["Runner"], None] | None = None, poll_s: float = 1.0,
                 threads_per_run: int | None = None):
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
        _atomic_write(yaml_path, cfg.to_yaml())
        _atomic_write(plans / f"{spec.name}.launch.json", json.dumps({
            "commit": self.commit, "concurrent": self.concurrent,
            "launched_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }))
        env = {
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
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
                    if self.time_budget is not None and (elapsed >= self.time_budget or (est is not None and elapsed + est > self.time_budget)):
                        for st in pending:
                            st.state = "skipped"
                            st.reason = f"time budget {self.time_budget:.0f} s (elapsed {elapsed:.0f} s, a run takes ~{est or 0:.0f} s)"
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
            for name, (st, handle, _log) in running.items():
                self.executor.stop(handle)
                st.state, st.reason = "interrupted", "stopped before it finished (its checkpoint resumes it)"
        return self.status


# ----------------------------------------------------------------------------------------------------------
# Tables
# ----------------------------------------------------------------------------------------------------------
def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    m = statistics.fmean(values)
    return m, (statistics.stdev(values) if len(values) > 1 else None)


def _cell(values: Sequence[float]) -> str:
    if not values:
        return "—"
    m, s = _mean_std(values)
    return f"{m:.2f} ± {s:.2f} ({len(values)})" if s is not None else f"{m:.2f} (1)"


def _signed(x: float) -> str:
    return f"{x:+.2f}"


def _missing(states: Sequence[RunStatus]) -> str:
    if not states:
        return "—"
    kinds = sorted({st.state for st in states if st.state != "done"})
    return "—" if not kinds else {"failed": "failed", "skipped": "not run", "pending": "not run",
                                   "interrupted": "cut", "running": "running"}.get(kinds[0], kinds[0])


def _group(status: Mapping[str, RunStatus], table: TableSpec, specs: Sequence[RunSpec]) -> dict[tuple[str, float], list[RunStatus]]:
    cells: dict[tuple[str, float], list[RunStatus]] = {}
    for sp in specs:
        st = status.get(sp.name)
        if st is not None and sp.dataset == table.dataset:
            cells.setdefault((sp.method, sp.imbalance), []).append(st)
    return cells


def _top1s(states: Sequence[RunStatus]) -> list[float]:
    return [float(st.result["top1"]) for st in states if st.state == "done" and st.result is not None]


def _fmt_value(v: Any) -> str:
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_fmt_value(x) for x in v) + "]"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def _notes(table: TableSpec, specs: Sequence[RunSpec], status: Mapping[str, RunStatus], work: Path) -> list[str]:
    methods = sorted({sp.method for sp in specs}, key=lambda m: (table.methods + tuple(METHODS)).index(m))
    cfgs = {m: next(sp for sp in specs if sp.method == m).config(work) for m in methods}
    done = [st for st in status.values() if st.state == "done" and st.result]
    lines = []
    epochs = sorted({c.optim.epochs for c in cfgs.values()})
    rec = "the paper's recipe" if epochs == [200] else f"**NOT the paper's recipe: {', '.join(map(str, epochs))} epochs** (paper: 200), schedule scaled proportionally"
    lines.append(f"- Training: {rec}; ResNet-32, SGD momentum 0.9, batch 128, lr 0.1 decayed x0.1 at epochs "
                 f"{', '.join(map(str, cfgs[methods[0]].optim.milestones)) or '(none)'}; u=10, lambda=1.5, alpha=0.5, random cluster splitting.")
    user = {k: v for sp in specs for k, v in sp.sets if k not in NO_RESULT_EFFECT}
    if user:
        lines.append("- Overrides of the recipe (`--set`): " + ", ".join(f"`{k}={_fmt_value(v)}`" for k, v in sorted(user.items())))
    lines.append("- Not in the paper (value used, and its source):")
    for key, (only, source) in paper.NOT_IN_PAPER.items():
        users = [m for m in methods if only is None or m in only]
        if not users:
            continue
        sec, k = key.split(".")
        vals = {_fmt_value(getattr(getattr(cfgs[m], sec), k)) for m in users}
        who = "" if only is None else f" ({', '.join(METHOD_LABELS.get(m, m) for m in users)})"
        lines.append(f"  - `{key}` = {' / '.join(sorted(vals))}{who}: {source}")
    if done:
        cards = sorted({str(st.result.get("card")) for st in done})
        torches = sorted({str(st.result.get("torch")) for st in done})
        commits = sorted({str(st.result.get("commit", "unknown")) for st in done})
        walls = [float(st.result.get("wall_s") or 0) for st in done]
        conc = sorted({int(st.result.get("concurrent") or 1) for st in done})
        lines.append(f"- Card: {', '.join(cards)}; torch {', '.join(torches)}; commit {', '.join(commits)}.")
        lines.append(f"- Wall time per run (training loop, {'/'.join(map(str, conc))} run(s) sharing the device): "
                     f"median {statistics.median(walls):.0f} s, total {sum(walls):.0f} s over {len(walls)} runs.")
    states = [status[sp.name] for sp in specs if sp.name in status]
    n_done = sum(st.state == "done" for st in states)
    lines.append(f"- Runs: {n_done} of {len(states)} finished.")
    for label, kind in (("Failed", "failed"), ("Not run", "skipped"), ("Not run", "pending"), ("Cut short", "interrupted")):
        group = [st for st in states if st.state == kind]
        if group:
            reasons = sorted({st.reason for st in group})
            lines.append(f"- {label}: " + ", ".join(st.spec.name for st in group) + (f" ({'; '.join(reasons)})" if reasons and reasons != [""] else ""))
    return lines


def render_table(table: TableSpec, specs: Sequence[RunSpec], status: Mapping[str, RunStatus], *, work: Path,
                 fig: str | None = None) -> str:
    """The Markdown of one table from the runs' statuses (results of finished runs)."""
    specs = [sp for sp in specs if sp.dataset == table.dataset and sp.method in _rows(table, specs)]
    cells = _group(status, table, specs)
    imbs = sorted({sp.imbalance for sp in specs}, key=lambda b: (paper.IMBALANCES + (b,)).index(b) if b in paper.IMBALANCES else 99)
    rows = _rows(table, specs)
    tag = next((sp.tag for sp in specs if sp.tag), "")
    head = [f"# {table.title}{f' (runs tagged {tag})' if tag else ''}", ""]
    out: list[str] = []
    if table.kind == "table1":
        head += [
            "Top-1 accuracy (%) on the balanced CIFAR-10 test set (10,000 images) at the **final epoch**, mean ± sample "
            "std over seeds (number of seeds in parentheses). *paper*: Table 1 of the paper (CIFAR-10); "
            "*Δ*: ours − paper. No epoch, checkpoint or hyperparameter was chosen on test data.",
            "",
        ]
        cols = ["Method"] + [c for b in imbs for c in (f"β={b:g}", "paper", "Δ")]
        out += ["| " + " | ".join(cols) + " |", "|" + "---|" + "---:|" * (len(cols) - 1)]
        for m in rows:
            line = [METHOD_LABELS.get(m, m)]
            for b in imbs:
                states = cells.get((m, b), [])
                vals = _top1s(states)
                pc = paper.table1(table.dataset, m, b)
                line.append(_cell(vals) if vals else _missing(states))
                line.append(f"{pc.value:.2f}" if pc else "—")
                line.append(_signed(statistics.fmean(vals) - pc.value) if (vals and pc) else "—")
            out.append("| " + " | ".join(line) + " |")
    else:
        head += [
            "Top-1 accuracy (%) at the final epoch, mean ± sample std over seeds, on **CIFAR-10-LT**. The paper's "
            "Table 4 is on CIFAR-100-LT and Tiny-ImageNet-LT; the CIFAR-100 train split is not available here, so "
            "the ablation runs on CIFAR-10-LT. The paper's CIFAR-100 numbers are shown as **context only** (another "
            "dataset: no difference column). *vs CE* compares each row with the CE row of the same source "
            "(ours with ours, paper with paper).",
            "",
        ]
        cols = ["FBH", "CDH", "Method"] + [c for b in imbs for c in (f"β={b:g}", "vs CE", "paper C-100", "paper vs CE")]
        out += ["| " + " | ".join(cols) + " |", "|---|---|---|" + "---:|" * (len(cols) - 3)]
        for m in rows:
            fbh, cdh = METHODS[m].fbh, METHODS[m].cdh
            line = ["✓" if fbh else "-", "✓" if cdh else "-", METHOD_LABELS.get(m, m)]
            for b in imbs:
                states = cells.get((m, b), [])
                vals = _top1s(states)
                ce = _top1s(cells.get(("ce", b), []))
                pc, pce = paper.table4("cifar100", m, b), paper.table4("cifar100", "ce", b)
                line.append(_cell(vals) if vals else _missing(states))
                line.append(_signed(statistics.fmean(vals) - statistics.fmean(ce)) if (vals and ce and m != "ce") else "—")
                line.append(f"{pc.value:.2f}" if pc else "—")
                line.append(_signed(pc.value - pce.value) if (pc and pce and m != "ce") else "—")
            out.append("| " + " | ".join(line) + " |")
    # Many / medium / few at the first imbalance (the paper's Sec. 3.2 split: > 100, 20..100, < 20 images).
    b0 = imbs[0] if imbs else None
    groups = []
    for m in rows:
        done = [st.result for st in cells.get((m, b0), []) if st.state == "done" and st.result]
        if done:
            def mean_of(k: str) -> str:
                v = [float(r[k]) for r in done if r.get(k) is not None and not (isinstance(r[k], float) and math.isnan(r[k]))]
                return f"{statistics.fmean(v):.2f}" if v else "—"
            groups.append(f"| {METHOD_LABELS.get(m, m)} | {mean_of('many')} | {mean_of('medium')} | {mean_of('few')} | {len(done)} |")
    if groups:
        out += ["", f"Recall by class group at β={b0:g} (many > 100, medium 20–100, few < 20 training images; "
                    "— where a group has no class), mean over seeds:", "",
                "| Method | many | medium | few | seeds |", "|---|---:|---:|---:|---:|", *groups]
    if fig:
        out += ["", f"Fig. 3 (CE vs two-head at β={b0:g}: per-class recall and classifier weight norms, means over seeds): "
                    f"[{fig}]({fig})"]
    notes = _notes(table, specs, status, work)
    return "\n".join(head + out + ["", "Notes:", "", *notes, ""])


def _rows(table: TableSpec, specs: Sequence[RunSpec]) -> list[str]:
    present = {sp.method for sp in specs if sp.dataset == table.dataset}
    ordered = [m for m in table.methods if m in present]
    if table.kind == "table1":
        ordered += sorted(present - set(ordered) - {"fbh_only", "cdh_only"}, key=list(METHODS).index)
    else:
        ordered += sorted(present & {"fbh_only", "cdh_only"} - set(ordered), key=list(METHODS).index)
    return ordered


def fig3(status: Mapping[str, RunStatus], dataset: str, imbalance: float, out_path: Path) -> Path | None:
    """Paper Fig. 3 for CE vs two-head at ``imbalance``: per-class recall and weight norms, averaged over the seeds
    both have finished. None when either has no finished run (or plotting is unavailable)."""
    import numpy as np

    runs: dict[str, dict] = {}
    counts = None
    for m, label in (("ce", "CE"), ("twohead", "two-head (ours)")):
        res = [st.result for st in status.values() if st.state == "done" and st.result and st.spec.method == m
               and st.spec.dataset == dataset and st.spec.imbalance == imbalance]
        if not res:
            return None
        counts = res[0]["class_counts"]
        runs[label] = {
            "top1": statistics.fmean(float(r["top1"]) for r in res),
            "per_class_recall": np.mean([r["per_class_recall"] for r in res], axis=0).tolist(),
            "weight_norms": (np.mean([r["weight_norms"] for r in res], axis=0).tolist()
                             if all(r.get("weight_norms") for r in res) else None),
        }
    try:
        from twohead.plots import plot_comparison

        return plot_comparison(runs, counts, out_path)
    except Exception as e:  # noqa: BLE001 - a figure must never lose the tables
        log.warning("Fig. 3 plot failed: %s", e)
        return None


def write_report(tables: Sequence[str], specs: Sequence[RunSpec], status: Mapping[str, RunStatus], *, out: Path,
                 work: Path, archive: Path | None = None) -> list[Path]:
    """Write ``<out>/<table>[-tag].md`` for every table and Fig. 3 when its runs exist; re-pack ``archive``."""
    out = Path(out)
    written = []
    for tname in tables:
        t = TABLES[tname]
        tspecs = [sp for sp in specs if sp.dataset == t.dataset]
        tag = next((sp.tag for sp in tspecs if sp.tag), "")
        suffix = f"-{tag}" if tag else ""
        fig_rel = None
        imbs = [sp.imbalance for sp in tspecs]
        if imbs:
            b0 = 100.0 if 100.0 in imbs else imbs[0]
            fp = fig3(status, t.dataset, b0, out / t.dataset / f"fig3-imb{b0:g}{suffix}.png")
            if fp is not None:
                fig_rel = str(fp.relative_to(out))
                if fp not in written:
                    written.append(fp)
        md = render_table(t, tspecs, status, work=work, fig=fig_rel)
        p = out / f"{tname}{suffix}.md"
        _atomic_write(p, md)
        written.append(p)
    if archive is not None:
        _archive(out, Path(archive))
    return written


def _archive(out: Path, archive: Path) -> None:
    """``archive`` = tar.gz of the tables, per-run JSONs and figures under ``out`` (written atomically)."""
    archive.parent.mkdir(parents=True, exist_ok=True)
    tmp = archive.with_name(f".{archive.name}.tmp{os.getpid()}")
    with tarfile.open(tmp, "w:gz") as tar:
        for p in sorted(out.rglob("*")):
            if p.is_file() and p.suffix in (".json", ".md", ".png") and not p.name.startswith("."):
                tar.add(p, arcname=str(Path(out.name) / p.relative_to(out)))
    os.replace(tmp, archive)


# ----------------------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------------------
def _list(text: str, cast: Callable[[str], Any]) -> list:
    items = []
    for part in (x.strip() for x in text.split(",")):
        if not part:
            continue
        if cast is int and "-" in part[1:]:
            lo, hi = part.split("-", 1)
            items.extend(range(int(lo), int(hi) + 1))
        else:
            items.append(cast(part))
    return items


def _default_concurrency() -> int:
    try:
        import torch

        return 4 if torch.cuda.is_available() else 1
    except ImportError:
        return 1


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m rayjobs.reproduce", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--table", action="append", default=[], choices=list(TABLES), help="table to reproduce (repeatable)")
    p.add_argument("--methods", help="comma-separated method.name rows (default: the table's rows)")
    p.add_argument("--imbalances", help="comma-separated imbalance ratios (default 100,50,10)")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds or ranges (default 0,1,2)")
    p.add_argument("--epochs", type=int, help="train this many epochs (schedule scaled; names the runs -e<E>)")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="config override for every run (repeatable)")
    p.add_argument("--out", default="results", help="per-run JSONs, tables and Fig. 3 (default results/)")
    p.add_argument("--work", default="runs/reproduce", help="full run folders, logs and resolved configs (default runs/reproduce)")
    p.add_argument("--concurrent", type=int, default=0, help="runs at once (default 4 with a GPU, else 1)")
    p.add_argument("--time-budget", type=float, help="seconds: launch no run that would end past this (estimated from finished runs)")
    p.add_argument("--archive", help="re-pack --out into this .tar.gz after every finished run")
    p.add_argument("--commit", default="", help="commit to record (default $TWOHEAD_COMMIT or git rev-parse HEAD)")
    p.add_argument("--dry-run", action="store_true", help="print the plan in launch order and exit")
    p.add_argument("--report-only", action="store_true", help="launch nothing: collect finished runs and write the tables")
    p.add_argument("--ray", action="store_true", help="run each run as a Ray task with 1/concurrent GPU (needs Ray)")
    p.add_argument("--ray-address", default="", help="Ray cluster address (default $RAY_ADDRESS or a local cluster)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    tables = list(dict.fromkeys(args.table or ["cifar10-lt"]))
    out, work = Path(args.out), Path(args.work)
    try:
        specs = plan_runs(
            tables,
            methods=_list(args.methods, str) if args.methods else None,
            imbalances=_list(args.imbalances, float) if args.imbalances else None,
            seeds=_list(args.seeds, int),
            epochs=args.epochs,
            sets=args.sets,
            work=work,
        )
    except (ConfigError, ValueError) as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    concurrent = args.concurrent or _default_concurrency()
    commit = args.commit or git_commit()

    def update(runner: Runner) -> None:
        write_report(tables, specs, runner.status, out=out, work=work,
                     archive=Path(args.archive) if args.archive else None)
        n = sum(st.state == "done" for st in runner.status.values())
        print(f"[{time.monotonic() - runner.t0:6.0f} s] {n}/{len(specs)} runs finished", flush=True)

    executor = None
    if args.ray and not (args.dry_run or args.report_only):
        try:
            import torch

            gpu = torch.cuda.is_available()
        except ImportError:
            gpu = False
        executor = RayExecutor(concurrent, gpu, args.ray_address or None)
    runner = Runner(specs, out=out, work=work, concurrent=concurrent, time_budget=args.time_budget,
                    executor=executor, commit=commit, on_update=update)
    runner.refresh()
    if args.dry_run:
        print(f"# {len(specs)} runs, {concurrent} at a time; work {work}, results {out}")
        for i, sp in enumerate(specs, 1):
            st = runner.status[sp.name]
            print(f"{i:3d}. {sp.name:<32} {st.state:<8} {st.reason}")
        return 0
    if args.report_only:
        written = write_report(tables, specs, runner.status, out=out, work=work,
                               archive=Path(args.archive) if args.archive else None)
        print("\n".join(map(str, written)))
        return 0

    def on_signal(signum, _frame):
        raise _Interrupted(signal.Signals(signum).name)

    saved = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    rc = 0
    try:
        runner.run()
    except _Interrupted as e:
        print(f"reproduce: {e}: stopped the running runs; writing what finished", file=sys.stderr)
        rc = 130
    finally:
        for s, h in saved.items():
            signal.signal(s, h)
        written = write_report(tables, specs, runner.status, out=out, work=work,
                               archive=Path(args.archive) if args.archive else None)
    states = [st.state for st in runner.status.values()]
    print(f"finished {states.count('done')}/{len(states)}; failed {states.count('failed')}; "
          f"not run {states.count('skipped')}; cut {states.count('interrupted')}; "
          f"{time.monotonic() - runner.t0:.0f} s")
    for st in runner.status.values():
        if st.state == "failed":
            print(f"FAILED {st.spec.name}: {st.reason}")
    print("\n".join(map(str, written)))
    if rc:
        return rc
    return 1 if "failed" in states else 0


if __name__ == "__main__":
    raise SystemExit(main())
