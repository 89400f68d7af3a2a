"""The fault matrix: real faults injected into real runs, and what each one costs.

    python -m rayjobs.faults                    # every scenario, then the table
    python -m rayjobs.faults --only kill-run    # scenarios whose name starts with this

Each scenario runs the real commands (``twohead train``, ``rayjobs.prepare`` against a local S3 server, ...) on a
tiny configuration, injects one fault (a signal at a chosen point, a full disk, a storage endpoint going away), runs
the same command again the way a user would, and compares the outcome with an uninterrupted run. A row says what the
fault was, where it hit, what the user saw, how many epochs had to be trained again and whether anything finished
was lost (the target is 0 everywhere). ``tests/rayjobs/test_faults.py`` runs the same scenarios and asserts it.

(Over 400 lines on purpose: each scenario is a short script against real components -- a run, a search, an
object store, a database -- and the matrix is only useful read as a whole.)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rayjobs.cluster.local import free_port
from twohead.runs import LocalReporter

__all__ = ["Outcome", "SCENARIOS", "run_scenarios", "main"]

# A run small enough to take seconds, long enough to be hit mid-way: 4 epochs of ResNet-8 on 10% of CIFAR-10-LT,
# a checkpoint every epoch.
TINY_RUN = [
    "--preset",
    "smoke",
    "--set",
    "data.train_fraction=0.1",
    "--set",
    "data.eval_fraction=0.2",
    "--set",
    "optim.epochs=4",
    "--set",
    "optim.milestones=[3]",
    "--set",
    "run.plots=false",
    "--set",
    "run.progress=false",
]


@dataclass
class Outcome:
    fault: str  # what was injected
    where: str  # the command and the moment it hit
    outcome: str  # what the user saw, and what the rerun did
    epochs_lost: int  # epochs trained again because of the fault
    trials_lost: int | None  # finished search trials lost (None: no search involved)
    data_lost: int  # finished results (checkpoints, metrics, shards) lost or corrupted
    ok: bool  # the rerun finished with the same result as an uninterrupted run

    def row(self) -> list:
        return [
            self.fault,
            self.where,
            self.outcome,
            self.epochs_lost,
            "-" if self.trials_lost is None else self.trials_lost,
            self.data_lost,
            "yes" if self.ok else "NO",
        ]


def _env() -> dict[str, str]:
    return {**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"}


def _train(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "twohead.cli", "train", *TINY_RUN, "--out", str(out), *extra]


def _history(run: Path) -> list[dict]:
    f = run / "history.jsonl"
    return [json.loads(x) for x in f.read_text().splitlines()] if f.is_file() else []


def _wait_for_epoch(run_parent: Path, epoch: int, proc: subprocess.Popen, timeout: float = 600) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in run_parent.glob("*"):
            if len(_history(run)) >= epoch:
                return run
        if proc.poll() is not None:
            raise RuntimeError(f"the run ended (exit {proc.returncode}) before epoch {epoch}")
        time.sleep(0.2)
    raise TimeoutError(f"no epoch {epoch} within {timeout:.0f} s")


def _saved_epoch(run: Path) -> int:
    """The epoch a rerun resumes from (the newest readable checkpoint), 0 without one."""
    state = LocalReporter(run).peek()
    return int(state["epoch"]) if state else 0


def _reference(work: Path) -> dict:
    """The uninterrupted run every scenario compares with (trained once per process)."""
    if not hasattr(_reference, "cache"):
        out = work / "reference"
        subprocess.run(_train(out), check=True, capture_output=True, env=_env(), timeout=1800)
        (run,) = out.glob("*")
        _reference.cache = json.loads((run / "metrics.json").read_text())
    return _reference.cache


def _said(text: str, work: Path) -> str:
    """The last line the command printed, with the scenario's folder left out of paths."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    line = lines[-1].replace(f"{work}/", "") if lines else ""
    return f"'{line[:150]}{'...' if len(line) > 150 else ''}'" if line else "nothing (killed)"


def kill_run(sig: signal.Signals) -> Callable[[Path], Outcome]:
    """Signal a single run after its second epoch, rerun the same command, compare with an uninterrupted run."""

    def scenario(work: Path) -> Outcome:
        ref = _reference(work)
        out = work / f"kill-{sig.name}"
        proc = subprocess.Popen(_train(out), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        run = _wait_for_epoch(out, 2, proc)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=300)
        trained = len(_history(run))
        saved = _saved_epoch(run)
        r = subprocess.run(_train(out), capture_output=True, text=True, env=_env(), timeout=1800)
        hist = _history(run)
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        same = r.returncode == 0 and metrics.get("top1") == ref["top1"] and [h["epoch"] for h in hist] == [1, 2, 3, 4]
        return Outcome(
            fault=sig.name,
            where="`twohead train`, after epoch 2 of 4",
            outcome=f"exit {proc.returncode}, said {_said(err, work)}; the rerun resumed from epoch {saved}",
            epochs_lost=trained - saved,
            trials_lost=None,
            data_lost=0 if same else 1,
            ok=same,
        )

    return scenario


def _file_size_limit(limit: int) -> Callable[[], None]:
    def apply() -> None:  # in the child: writes past `limit` bytes fail with EFBIG instead of killing it
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def full_disk(work: Path) -> Outcome:
    """The run folder's file system fills up during a checkpoint; space is freed; the same command resumes.

    A 1.5 MB tmpfs holds two ResNet-8 checkpoints (~0.65 MB each: the current one and the one before), so the third
    checkpoint write fails. Where mounting is not permitted, a per-process file-size limit makes the first checkpoint
    write fail the same way (EFBIG instead of ENOSPC)."""
    ref = _reference(work)
    mnt = work / "small-disk"
    mnt.mkdir()
    tmpfs = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1500k", "tmpfs", str(mnt)], capture_output=True).returncode == 0
    try:
        out = mnt / "runs"
        limit = None if tmpfs else _file_size_limit(300_000)
        first = subprocess.run(_train(out), capture_output=True, text=True, env=_env(), timeout=1800, preexec_fn=limit)
        (run,) = out.glob("*")
        leftovers = [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
        trained, saved = len(_history(run)), _saved_epoch(run)
        if tmpfs:
            subprocess.run(["mount", "-o", "remount,size=16m", str(mnt)], check=True)
        second = subprocess.run(_train(out), capture_output=True, text=True, env=_env(), timeout=1800)
        metrics = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").is_file() else {}
        same = first.returncode == 1 and second.returncode == 0 and not leftovers and metrics.get("top1") == ref["top1"]
        return Outcome(
            fault="full disk" if tmpfs else "file-size limit",
            where=f"`twohead train`, writing the epoch-{saved + 1} checkpoint",
            outcome=f"exit {first.returncode}, said {_said(first.stderr, work)}; after freeing space the rerun "
            f"resumed from epoch {saved}",
            epochs_lost=trained - saved,
            trials_lost=None,
            data_lost=0 if same else 1,
            ok=same,
        )
    finally:
        if tmpfs:
            subprocess.run(["umount", str(mnt)], capture_output=True)


# A search small enough for minutes: 3 trials of 3 epochs on 5% of CIFAR-10-LT, 2 at a time, no early stopping (so
# every trial ends COMPLETE and "nothing finished is lost" is a plain comparison of the study before and after).
TINY_SEARCH = {
    "base": {
        "preset": "smoke",
        "set": {"data.train_fraction": 0.05, "data.eval_fraction": 0.2, "optim.epochs": 3, "optim.milestones": []},
    },
    "metric": "val_top1",
    "mode": "max",
    "params": {"u": {"type": "int", "low": 2, "high": 30}, "alpha": {"type": "float", "low": 0.3, "high": 1.0}},
    "search": {"num_samples": 3, "max_concurrent": 2, "seed": 0},
    "resources": {"cpus_per_trial": 1, "gpus_per_trial": 0},
}


def _trials(out: Path, url: str | None = None) -> list:
    """The trials of the search's study: the SQLite file in ``out``, or the database at ``url``."""
    import optuna

    db = out / "faults.db"
    if url is None and not db.is_file():
        return []
    try:
        return optuna.load_study(study_name="faults", storage=url or f"sqlite:///{db}").trials
    except Exception:  # the study is being created, the database is locked for a moment, or restarting
        return []


def _start_search(work: Path, out: Path, env: dict[str, str], *extra: str) -> tuple[list[str], subprocess.Popen]:
    """Start the tiny search; return its command and the driver once a trial has finished and another is mid-way."""
    import optuna
    import yaml

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = work / "faults.yaml"
    space.write_text(yaml.safe_dump(TINY_SEARCH))
    cmd = [sys.executable, "-m", "rayjobs.search", "--space", str(space), "--out", str(out), "--study-name", "faults"]
    cmd += ["--verbose", "0", "--num-cpus", "2", *extra]
    url = env.get("FAULTS_STUDY_URL")
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        ts = _trials(out, url)
        done = [t for t in ts if t.state.name == "COMPLETE"]
        mid = [t for t in ts if t.state.name == "RUNNING" and _history(Path(t.user_attrs.get("run_dir", "-")))]
        if done and mid:
            return cmd, proc
        if proc.poll() is not None:
            raise RuntimeError(f"the search ended (exit {proc.returncode}) before the fault: {log.read_text()[-800:]}")
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    raise TimeoutError("no finished and no running trial within 900 s")


def _rerun(cmd: list[str], out: Path, env: dict) -> subprocess.CompletedProcess:
    """Run the search command again; its output is kept beside the first run's (``<out>.rerun.log``), the record
    to read when a row says the search did not end whole."""
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800)
    out.with_suffix(".rerun.log").write_text(r.stdout + r.stderr)
    return r


def _cut(out: Path, url: str | None) -> dict[int, tuple[int, int]]:
    """For each trial the study has RUNNING after a fault: (epochs it trained, epoch of its newest checkpoint)."""
    cut = {}
    for t in _trials(out, url):
        if t.state.name == "RUNNING" and "run_dir" in t.user_attrs:
            run = Path(t.user_attrs["run_dir"])
            cut[t.number] = (len(_history(run)), _checkpoint_epoch(run.parent))
    return cut


def _search_row(
    fault: str, study: str, out: Path, url: str | None, finished: dict, cut: dict, rerun_rc: int, said: str
) -> Outcome:
    """The row of a search scenario: finished trials lost, epochs trained again by the ``cut`` trials, and whether
    the search ended whole."""
    lost, whole, said = _search_outcome(out, url, finished, rerun_rc, said)
    return Outcome(
        fault=fault,
        where=f"`rayjobs.search`{study}, a trial finished, another mid-way",
        outcome=said,
        epochs_lost=sum(h - c for h, c in cut.values()),
        trials_lost=lost,
        data_lost=lost + (0 if whole else 1),
        ok=lost == 0 and whole,
    )


def _search_outcome(out: Path, url: str | None, finished: dict, rerun_rc: int, said: str) -> tuple[int, bool, str]:
    """Finished trials lost, whether the search ended whole (3 COMPLETE trials, every epoch once), and ``said``
    with what went wrong added."""
    trials = _trials(out, url)
    after = {t.number: (t.state.name, t.values) for t in trials}
    lost = sum(1 for n, v in finished.items() if after.get(n) != v)
    whole = rerun_rc == 0 and len(after) == 3 and all(v[0] == "COMPLETE" for v in after.values())
    whole = whole and all(
        [h["epoch"] for h in _history(Path(t.user_attrs["run_dir"]))] == [1, 2, 3] for t in trials if "run_dir" in t.user_attrs
    )
    if not whole:
        said += f"; BUT the search ended with exit {rerun_rc} and trials { ({n: f'{v[0]} {v[1]}' for n, v in sorted(after.items())}) }"
        log = out.with_suffix(".rerun.log")
        if log.is_file():
            errors = [ln.strip()[:300] for ln in log.read_text().splitlines() if "Error" in ln or "error" in ln]
            said += f" (the rerun's output: {log}; its last error lines: {errors[-3:]})"
    return lost, whole, said


def _checkpoint_epoch(trial_dir: Path) -> int:
    """The epoch of a Tune trial's newest checkpoint folder (``checkpoint_00000k`` is epoch k + 1), 0 without one."""
    ks = [int(p.name.split("_")[1]) for p in trial_dir.glob("checkpoint_*") if p.name.split("_")[1].isdigit()]
    return max(ks) + 1 if ks else 0


def kill_search(work: Path) -> Outcome:
    """The machine running a search's driver dies (SIGKILL to the driver and the local Ray it started) once a
    trial has finished and another is mid-way; the same command is run again."""
    out = work / "kill-search"
    cmd, proc = _start_search(work, out, _env())
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and everything it started, at once
    proc.wait()
    finished = {t.number: (t.state.name, t.values) for t in _trials(out) if t.state.name == "COMPLETE"}
    trained = _cut(out, None)
    r = _rerun(cmd, out, _env())
    resumed = ", ".join(f"trial {n} from epoch {c} (had trained {h})" for n, (h, c) in sorted(trained.items()))
    said = f"nothing printed (killed); the rerun kept {len(finished)} finished trial(s) and resumed {resumed or 'none'}"
    return _search_row("SIGKILL (driver + its local Ray)", "", out, None, finished, trained, r.returncode, said)


class NotHere(Exception):
    """A scenario needs something this machine lacks (e.g. PostgreSQL's binaries)."""


def _postgres_bindir() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True).stdout.strip()
        if out and (Path(out) / "initdb").is_file():
            return Path(out)
    except FileNotFoundError:
        pass
    return found[-1].parent if found else None


def postgres_restart(work: Path) -> Outcome:
    """The PostgreSQL server holding a search's study restarts (``pg_ctl restart -m fast``: every connection
    dropped) while a trial is mid-way; the search goes on, or the same command is run again."""
    bindir = _postgres_bindir()
    if bindir is None:
        raise NotHere("no PostgreSQL binaries (initdb) on this machine")
    as_db = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []  # PostgreSQL refuses to run as root
    pg = Path(tempfile.mkdtemp(prefix="twohead-faults-pg-"))
    if as_db:
        subprocess.run(["chown", "postgres:", str(pg)], check=True)
    data, log = pg / "data", pg / "server.log"
    port = free_port()
    ctl = [*as_db, str(bindir / "pg_ctl"), "-D", str(data)]
    try:
        subprocess.run(
            [*as_db, str(bindir / "initdb"), "-D", str(data), "-U", "twohead", "--auth=trust"], check=True, capture_output=True
        )
        opts = f"-p {port} -k {pg} -c listen_addresses=127.0.0.1"
        subprocess.run([*ctl, "-l", str(log), "-w", "-o", opts, "start"], check=True, capture_output=True)
        subprocess.run([*as_db, str(bindir / "createdb"), "-h", str(pg), "-p", str(port), "-U", "twohead", "faults"], check=True)
        url = f"postgresql+psycopg2://twohead@127.0.0.1:{port}/faults"
        env = {**_env(), "FAULTS_STUDY_URL": url}
        out = work / "postgres-restart"
        cmd, proc = _start_search(work, out, env, "--storage", "env:FAULTS_STUDY_URL")
        finished = {t.number: (t.state.name, t.values) for t in _trials(out, url) if t.state.name == "COMPLETE"}
        subprocess.run([*ctl, "-l", str(log), "-m", "fast", "-w", "restart"], check=True, capture_output=True)
        try:
            proc.wait(timeout=1800)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        first = proc.returncode
        said = f"the search went on and ended (exit {first})"
        rc, trained = first, {}
        if first != 0:
            text = out.with_suffix(".log").read_text()
            trained = _cut(out, url)
            rc = _rerun(cmd, out, env).returncode
            said = f"exit {first}, said {_said(text, work)}; the rerun resumed the search"
        return _search_row("PostgreSQL restart", " (study in PostgreSQL)", out, url, finished, trained, rc, said)
    finally:
        subprocess.run([*ctl, "-m", "immediate", "stop"], capture_output=True)
        subprocess.run(["rm", "-rf", str(pg)])


class _ObjectStore:
    """A local S3 server (moto, the ``test`` extra) on a free port, with one bucket, whose objects outlive a stop and
    start of the server, as a real bucket outlives an outage. ``env``: what a command needs to reach it."""

    def __init__(self, bucket: str = "faults", **env: str):
        import logging

        import boto3

        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # the server's request log
        self.port = free_port()
        endpoint = f"http://127.0.0.1:{self.port}"
        keys = {"AWS_ACCESS_KEY_ID": "faults", "AWS_SECRET_ACCESS_KEY": "faults", "AWS_DEFAULT_REGION": "us-east-1"}
        self.env = {**_env(), **keys, "AWS_ENDPOINT_URL": endpoint, **env}
        self.bucket = bucket
        self.server = None
        self.start()
        self.s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="faults", aws_secret_access_key="faults")
        self.s3.create_bucket(Bucket=bucket)

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self.server.start()

    def stop(self) -> None:  # the outage: connections are refused from now on
        self.server.stop()

    def keys(self, prefix: str) -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return [o["Key"] for page in pages for o in page.get("Contents", [])]

    def read(self, key: str) -> bytes:
        return self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()

    def newest(self, prefix: str) -> float:
        """The latest write time (Unix seconds) of the objects under ``prefix``; -inf without any."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        times = [o["LastModified"].timestamp() for page in pages for o in page.get("Contents", [])]
        return max(times, default=float("-inf"))


def s3_outage(work: Path) -> Outcome:
    """The object store stops answering while ``rayjobs.prepare`` uploads shards, for longer than the command's
    retries (``TWOHEAD_S3_RETRIES=2`` here, so the scenario takes seconds, not the minute or more the default rides
    out), then comes back; the user reruns the command as its error says."""
    store = _ObjectStore(TWOHEAD_S3_RETRIES="2")
    env = store.env
    args = ["--preset", "smoke", "--set", "data.eval_fraction=0.2", "--rows-per-shard", "1024", "--threads", "1"]

    def prepare(name: str, *extra: str) -> list[str]:
        return [sys.executable, "-m", "rayjobs.prepare", "--out", "s3://faults/datasets", "--name", name, *args, *extra]

    def manifest(name: str) -> dict:
        return json.loads(store.read(f"datasets/{name}/manifest.json"))["splits"]

    try:
        subprocess.run(prepare("reference"), check=True, capture_output=True, env=env, timeout=1800)
        proc = subprocess.Popen(prepare("cut"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and proc.poll() is None:
            if len(store.keys("datasets/cut/")) >= 2:
                break
            time.sleep(0.05)
        uploaded = len(store.keys("datasets/cut/"))
        store.stop()
        try:
            _, err = proc.communicate(timeout=600)
        finally:
            store.start()  # the store is back, with what it held
        first = proc.returncode
        incomplete = "datasets/cut/manifest.json" not in store.keys("datasets/cut/manifest.json")
        said = _said(err, work)
        # the user reruns the same command, adding --overwrite only if it asks for it
        again = subprocess.run(prepare("cut"), capture_output=True, text=True, env=env, timeout=1800)
        overwrite = again.returncode == 2 and "--overwrite" in again.stderr
        if overwrite:
            again = subprocess.run(prepare("cut", "--overwrite"), capture_output=True, text=True, env=env, timeout=1800)
        leftovers = store.keys("datasets/cut/_tmp-")
        same = again.returncode == 0 and incomplete and not leftovers and manifest("cut") == manifest("reference")
        if not same:  # say what differs
            said += f"; BUT rerun exit {again.returncode} ({_said(again.stderr, work)}), leftovers {leftovers[:3]}"
        one_line = "Traceback" not in err and first not in (0, None)
        return Outcome(
            fault="object store down",
            where=f"`rayjobs.prepare` to S3, after {uploaded} of its objects, down for longer than its retries",
            outcome=f"exit {first}, said {said}; no manifest was published, so readers refuse the half dataset; the "
            f"rerun{' with --overwrite' if overwrite else ''} wrote it whole",
            epochs_lost=0,
            trials_lost=None,
            data_lost=0 if same else 1,
            ok=same and one_line,
        )
    finally:
        store.stop()


# A Ray Train run small enough for half a minute: 2 epochs of ResNet-8 on 5% of CIFAR-10-LT (the fractions are the
# prepared dataset's: a run takes them from its manifest), one worker with both CPUs. Its small images are loaded
# into memory, where the loop is exactly a local run's: an uninterrupted `twohead train` of the same configuration
# is the reference, to the last digit.
TINY_RAY_DATA = ["--preset", "smoke", "--set", "data.train_fraction=0.05", "--set", "data.eval_fraction=0.2"]
TINY_RAY_CONFIG = [
    a for kv in ("optim.epochs=2", "optim.milestones=[]", "run.plots=false", "run.progress=false") for a in ("--set", kv)
]


def _ray_reference(work: Path) -> dict:
    """The metrics of an uninterrupted local ``twohead train`` of the tiny Ray Train runs' configuration, the result
    those runs must end with (trained once per process; {} if it failed)."""
    if not hasattr(_ray_reference, "cache"):
        local = work / "ray-reference"
        cmd = [sys.executable, "-m", "twohead.cli", "train", *TINY_RAY_DATA, *TINY_RAY_CONFIG, "--out", str(local)]
        ref = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1800)
        _ray_reference.cache = json.loads(next(local.glob("*/metrics.json")).read_text()) if ref.returncode == 0 else {}
    return _ray_reference.cache


def _summary(text: str) -> dict:
    """The JSON line a ``rayjobs.train`` command printed last (Ray may print other lines after it), or {}."""
    lines = [ln for ln in text.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def s3_outage_run(work: Path) -> Outcome:
    """The object store a ``rayjobs.train`` run keeps its checkpoints and results in stops answering for 20 s just
    as Ray Train starts writing the epoch-2 checkpoint, then comes back: with the default retries Ray Train's own
    checkpoint and snapshot writes (through :func:`rayjobs.data.storage.ray_storage`) wait for it, and the run ends
    exactly as an uninterrupted local run of the same configuration (see ``TINY_RAY_CONFIG``)."""
    store = _ObjectStore()
    env = store.env

    def train(name: str) -> list[str]:
        data, runs = "s3://faults/datasets/d", "s3://faults/runs"
        cmd = [sys.executable, "-m", "rayjobs.train", "--data", data, "--storage", runs, "--name", name, "--preset", "smoke"]
        return [*cmd, *TINY_RAY_CONFIG, "--cpus-per-worker", "2"]

    def checkpoint_folders(name: str) -> set[str]:  # Ray Train's checkpoint folders in the store
        return {k.split("/")[2] for k in store.keys(f"runs/{name}/checkpoint_") if k.count("/") >= 3}

    try:
        subprocess.run(
            [sys.executable, "-m", "rayjobs.prepare", "--out", "s3://faults/datasets", "--name", "d", *TINY_RAY_DATA],
            check=True, capture_output=True, env=env, timeout=1800,
        )  # fmt: skip
        reference = _ray_reference(work)
        # The toolkit uploads an epoch's results (with its own retries) before Ray Train writes the checkpoint, so an
        # outage started from outside would meet the toolkit's write and be over before Ray's. The run's drill mode
        # (TWOHEAD_FAIL_MODE=pause) marks the moment epoch 2's results are up and holds Ray's write 5 s: the store
        # goes down inside that window, and Ray Train's checkpoint and snapshot writes meet an outage of 20 s, far
        # longer than the AWS SDK's default retries last (3 attempts within about 2 s).
        outage = 20.0
        log = work / "s3-outage-run.log"
        drill = {**env, "TWOHEAD_FAIL_AT_EPOCH": "2", "TWOHEAD_FAIL_MODE": "pause"}
        with open(log, "w") as f:  # a file, not a pipe: Ray's log lines would fill a pipe and block the run
            proc = subprocess.Popen(train("cut"), stdout=f, stderr=subprocess.STDOUT, text=True, env=drill)
        deadline = time.monotonic() + 900
        while proc.poll() is None and not store.keys("runs/cut/_fault-injected-epoch2") and time.monotonic() < deadline:
            time.sleep(0.05)
        # 1: epoch 1's checkpoint is there and epoch 2's not written yet (counted in the store, not in Ray Train's
        # snapshot: the controller may register epoch 1 after epoch 2 has started, and that is no reason to fail)
        before = len(checkpoint_folders("cut"))
        store.stop()
        time.sleep(outage)
        store.start()
        back_at = time.time()
        proc.wait(timeout=1800)
        # The row tests something only if Ray's write met the outage: epoch 2's checkpoint was written after the
        # store came back, having waited through it.
        late = store.newest("runs/cut/checkpoint_") - back_at if before == 1 else float("-inf")
        restored = _summary(log.read_text()).get("restored_epoch")
        done = store.keys("runs/cut/results/metrics.json") == ["runs/cut/results/metrics.json"]
        metrics = json.loads(store.read("runs/cut/results/metrics.json")) if done else {}
        epochs = [json.loads(x)["epoch"] for x in store.read("runs/cut/results/history.jsonl").decode().splitlines()]
        leftovers = [k for k in store.keys("runs/cut/") if "/_tmp-" in k]
        # test top-1 and NLL (a float to the last digit) equal the local uninterrupted run's
        keys = ("top1", "nll")
        same = proc.returncode == 0 and bool(reference) and all(metrics.get(k) == reference[k] for k in keys)
        same = same and epochs == [1, 2] and not leftovers and late >= 0
        said = f"exit {proc.returncode}: "
        if late >= 0:
            said += f"Ray Train's epoch-2 checkpoint write waited for the store (done {late:.1f} s after it came back)"
            said += " and the run went on"
        else:
            said += "the outage met no Ray Train write" if before != 1 else "Ray Train's checkpoint write did not wait"
        if restored:
            said += f" after a restart from epoch {restored}"
        if not same:
            said += f"; BUT epochs {epochs}, {[metrics.get(k) for k in keys]} vs {[reference.get(k) for k in keys]}"
            said += (
                f", leftovers {leftovers[:3]}; {_said(log.read_text(), work)}{'' if reference else ' (the reference run failed)'}"
            )
        return Outcome(
            fault="object store down",
            where=f"`rayjobs.train` (Ray Train, checkpoints and results on S3), as Ray Train writes the epoch-2 "
            f"checkpoint (of 2), for {outage:.0f} s",
            outcome=said,
            epochs_lost=2 - restored if restored else 0,
            trials_lost=None,
            data_lost=0 if same else 1,
            ok=same,
        )
    finally:
        store.stop()


def ctrl_c_ray_train(work: Path) -> Outcome:
    """Ctrl-C in the terminal of a ``rayjobs.train`` run on a local Ray, once Ray Train has registered epoch 1's
    checkpoint (of 2): SIGINT to the whole process group, the driver and the Ray it started, as a terminal sends
    it. The command ends with one line (exit 130); the same command resumes from epoch 1 and ends exactly as an
    uninterrupted local run of the same configuration."""
    data, runs = work / "ctrl-c-datasets", work / "ctrl-c-runs"
    cmd = [sys.executable, "-m", "rayjobs.train", "--data", str(data / "d"), "--storage", str(runs), "--name", "cut"]
    cmd += ["--preset", "smoke", *TINY_RAY_CONFIG, "--cpus-per-worker", "2"]
    prepare = [sys.executable, "-m", "rayjobs.prepare", "--out", str(data), "--name", "d", *TINY_RAY_DATA]
    subprocess.run(prepare, check=True, capture_output=True, env=_env(), timeout=1800)
    reference = _ray_reference(work)
    snapshot = runs / "cut" / "checkpoint_manager_snapshot.json"
    log = work / "ctrl-c-ray-train.log"
    with open(log, "w") as f:  # a file, not a pipe: Ray's log lines would fill a pipe and block the run
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)
    deadline = time.monotonic() + 900
    while proc.poll() is None and not snapshot.is_file() and time.monotonic() < deadline:
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):  # the run may have ended before the signal
        os.killpg(proc.pid, signal.SIGINT)
    try:
        first = proc.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        first = proc.wait()
    lines = [ln for ln in log.read_text().splitlines() if ln.strip()]
    r = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=1800)
    restored = _summary(r.stdout).get("restored_epoch")
    results = runs / "cut" / "results"
    metrics = json.loads((results / "metrics.json").read_text()) if (results / "metrics.json").is_file() else {}
    epochs = [h["epoch"] for h in _history(results)]
    keys = ("top1", "nll")
    stopped = first == 130 and bool(lines) and lines[-1].startswith("error: SIGINT: run 'cut' stopped")
    same = r.returncode == 0 and bool(reference) and all(metrics.get(k) == reference[k] for k in keys)
    same = same and epochs == [1, 2] and restored == 1
    said = f"exit {first}, said {_said(log.read_text(), work)}; the rerun resumed from epoch {restored}"
    if not (stopped and same):
        said += f"; BUT the rerun ended {r.returncode}, epochs {epochs}, {[metrics.get(k) for k in keys]} vs "
        said += f"{[reference.get(k) for k in keys]}; {_said(r.stderr, work)}"
    return Outcome(
        fault="Ctrl-C (SIGINT to the process group)",
        where="`rayjobs.train` (Ray Train, a local Ray), after epoch 1 of 2 was checkpointed",
        outcome=said,
        epochs_lost=1 - restored if restored is not None and restored < 1 else 0,
        trials_lost=None,
        data_lost=0 if same else 1,
        ok=stopped and same,
    )


SCENARIOS: dict[str, Callable[[Path], Outcome]] = {
    "kill-run-sigint": kill_run(signal.SIGINT),
    "kill-run-sigterm": kill_run(signal.SIGTERM),
    "kill-run-sigkill": kill_run(signal.SIGKILL),
    "ctrl-c-ray-train": ctrl_c_ray_train,
    "full-disk": full_disk,
    "kill-search": kill_search,
    "s3-outage": s3_outage,
    "s3-outage-run": s3_outage_run,
    "postgres-restart": postgres_restart,
}


def run_scenarios(names: list[str], work: Path) -> list[Outcome]:
    """Run the named scenarios in order; one this machine cannot run (:class:`NotHere`) is left out with a note."""
    rows = []
    for n in names:
        try:
            rows.append(SCENARIOS[n](work))
        except NotHere as e:
            print(f"faults: {n} not run: {e}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    from tabulate import tabulate

    p = argparse.ArgumentParser(prog="python -m rayjobs.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="run the scenarios whose name starts with this")
    p.add_argument("--json", help="also write the rows as JSON here")
    args = p.parse_args(argv)
    names = [n for n in SCENARIOS if n.startswith(args.only)]
    if not names:
        print(f"faults: error: --only {args.only!r} matches no scenario; known: {', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="twohead-faults-") as d:
        rows = run_scenarios(names, Path(d))
    print(
        tabulate(
            [r.row() for r in rows],
            tablefmt="github",
            headers=["fault", "where", "outcome", "epochs lost", "trials lost", "data lost", "same result"],
        )
    )
    if args.json:
        from twohead import atomic

        atomic.write_json(args.json, [r.__dict__ for r in rows])
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
