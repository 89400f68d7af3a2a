"""Ray-backed :class:`twohead.loop.Reporter` s: the loop's per-epoch metrics and checkpoints go to Ray Train
(DDP workers) or Ray Tune (trials), which persist checkpoints in ``RunConfig.storage_path`` (local folder or S3).

On checkpoint epochs the loop's state is saved as ``state.pt`` with its model card (``model_card.json`` / ``.md``,
:mod:`twohead.model_card`) in a temporary folder and handed to ``report``
as a Checkpoint; ``restore`` reads the latest one back, so a restarted worker group, a restored trial or a rerun
with the same name continues where it stopped. (The loop itself rewrites ``history.jsonl`` from the restored
state.) Every rank reports; only rank 0 attaches the checkpoint (notes/ray-2.60.md).

Rank 0 also publishes its run folder (``config.yaml``, ``history.jsonl``, then ``metrics.json`` and the plots)
to ``upload_url`` before each report, so the folder is in storage even when the scheduler stops the run right
after (ASHA) or the node disappears; a local ``upload_url`` that *is* the run folder is left alone.

Fault injection (tests, drills): ``fault={"at_epoch": k, "marker": URL, "mode": "kill" | "raise"}`` kills rank 0
once, at the end of epoch k before its report (after Ray Train has recorded the previous checkpoint), and writes
``marker`` so the retry passes.
"""

from __future__ import annotations

import os
import signal
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twohead.tracking import flat_scalars

STATE_FILE = "state.pt"  # the loop's resumable state inside a Ray checkpoint folder

__all__ = ["STATE_FILE", "TrainReporter", "TuneReporter", "flat_scalars"]


class TrainReporter:
    """``ray.train.report`` / ``ray.train.get_checkpoint`` (Ray Train workers)."""

    def __init__(
        self,
        run_dir: str | Path | None = None,
        *,
        upload_url: str | None = None,
        extra: dict | None = None,
        fault: dict | None = None,
    ):
        self.run_dir = None if run_dir is None else str(run_dir)
        self.upload_url = upload_url
        self.extra = dict(extra or {})  # constant facts added to every report (data_uri, epochs_total, ...)
        self.fault = fault or {}
        self.restored_epoch: int | None = None

    # -- the three Ray calls that differ between Train and Tune --------------------------------------------
    def _report(self, metrics: dict, checkpoint: Any = None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=checkpoint)

    def _get_checkpoint(self) -> Any:
        import ray.train

        return ray.train.get_checkpoint()

    def _checkpoint(self, path: str) -> Any:
        import ray.train

        return ray.train.Checkpoint.from_directory(path)

    def _rank(self) -> int:
        import ray.train

        return ray.train.get_context().get_world_rank()

    # -- twohead.loop.Reporter -----------------------------------------------------------------------------
    def restore(self) -> dict | None:
        ckpt = self._get_checkpoint()
        if ckpt is None:
            return None
        import torch

        with ckpt.as_directory() as d:
            state = torch.load(Path(d) / STATE_FILE, map_location="cpu", weights_only=False)
        self.restored_epoch = int(state["epoch"])
        return state

    def report(self, metrics: dict, make_state: Callable[[], dict] | None) -> None:
        # Ray results must be flat scalars (nested readings become "val_posthoc/la_tau1.0"); run_dir tells the search
        # report where metrics.json / PNGs are.
        rank = self._rank()
        self._maybe_fail(int(metrics["epoch"]), rank)
        m = {**flat_scalars(metrics), **self.extra}
        if self.upload_url is not None or self.run_dir is not None:
            m["run_dir"] = self.upload_url or self.run_dir
        if rank == 0:
            self._publish()
            self._maybe_pause(int(metrics["epoch"]))
        if make_state is None or rank != 0:
            self._report(m)
            return
        import torch

        from twohead.model_card import write_card

        with tempfile.TemporaryDirectory(prefix="twohead-ckpt-") as d:
            state = make_state()
            torch.save(state, Path(d) / STATE_FILE)
            # The card travels inside the checkpoint folder; its load line is relative to that folder.
            source = {k: self.extra[k] for k in ("data_uri", "manifest_sha256", "labels_uri") if k in self.extra}
            write_card(d, state, load_path=STATE_FILE, data_source=source)
            self._report(m, checkpoint=self._checkpoint(d))

    def _publish(self) -> None:
        if self.upload_url is None or self.run_dir is None or not os.path.isdir(self.run_dir):
            return
        from rayjobs.data import storage

        if storage.resolve(self.upload_url)[1] != storage.resolve(self.run_dir)[1]:
            storage.upload_dir(self.run_dir, self.upload_url)

    def _maybe_pause(self, epoch: int) -> None:
        """``TWOHEAD_FAIL_MODE=pause``: once, at the end of epoch k, after this epoch's results are uploaded and
        before Ray Train writes its checkpoint, write the marker and hold the report ``pause_s`` seconds -- the
        window a drill uses to take the object store down so that Ray Train's own write meets the outage."""
        at, marker = self.fault.get("at_epoch"), self.fault.get("marker")
        if self.fault.get("mode") != "pause" or not at or epoch != int(at) or not marker:
            return
        import time

        from rayjobs.data import storage

        if storage.exists(marker):
            return
        storage.write_bytes(marker, f"paused the report of epoch {epoch}\n".encode())
        time.sleep(float(self.fault.get("pause_s", 5.0)))

    def _maybe_fail(self, epoch: int, rank: int) -> None:
        at, marker = self.fault.get("at_epoch"), self.fault.get("marker")
        if rank != 0 or not at or epoch != int(at) or not marker or self.fault.get("mode") == "pause":
            return
        from rayjobs.data import storage

        if storage.exists(marker):
            return
        self._wait_for_registered_checkpoint(marker)
        storage.write_bytes(marker, f"killed rank 0 at the end of epoch {epoch}\n".encode())
        if self.fault.get("mode") == "raise":
            raise RuntimeError(f"injected failure at epoch {epoch} (TWOHEAD_FAIL_AT_EPOCH)")
        os.kill(os.getpid(), signal.SIGKILL)  # a worker dying mid-run, as on a preempted node

    def _wait_for_registered_checkpoint(self, marker: str, timeout_s: float = 60.0) -> None:
        """Hold the drill until Ray Train's controller has recorded the newest checkpoint in the run folder.

        ``ray.train.report`` returns once the worker has uploaded the checkpoint; the controller registers it
        (``checkpoint_manager_snapshot.json``) a moment later. A kill inside that gap leaves a checkpoint that no
        rerun resumes from -- what a real preemption can do, but not what the drill means to test (a worker dying
        *after* epoch k-1 was checkpointed), and a short epoch made the gap a coin flip."""
        import time

        from rayjobs.data import storage

        run_url = marker.rsplit("/", 1)[0]
        snapshot = storage.join(run_url, "checkpoint_manager_snapshot.json")
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            ckpts = sorted(n for n in storage.list_dir(run_url) if n.startswith("checkpoint_"))
            if not ckpts or (storage.exists(snapshot) and ckpts[-1] in storage.read_bytes(snapshot).decode()):
                return
            time.sleep(0.2)


class TuneReporter(TrainReporter):
    """``ray.tune.report`` / ``ray.tune.get_checkpoint`` (a single-worker Tune trial)."""

    def _report(self, metrics: dict, checkpoint: Any = None) -> None:
        from ray import tune

        tune.report(metrics, checkpoint=checkpoint)

    def _get_checkpoint(self) -> Any:
        from ray import tune

        return tune.get_checkpoint()

    def _checkpoint(self, path: str) -> Any:
        from ray import tune

        return tune.Checkpoint.from_directory(path)

    def _rank(self) -> int:
        return 0

    def _wait_for_registered_checkpoint(self, marker: str, timeout_s: float = 60.0) -> None:
        return None  # a Tune trial's folder holds no Ray Train controller snapshot to wait for
