"""Ray-backed :class:`twohead.loop.Reporter` s: the loop's per-epoch metrics and checkpoints go to Ray Train
(DDP workers) or Ray Tune (trials), which persist checkpoints in ``RunConfig.storage_path`` (local folder or S3).

On checkpoint epochs the loop's state is saved as ``state.pt`` in a temporary folder and handed to ``report``
as a Checkpoint; ``restore`` reads the latest one back, so a restarted worker group, a restored trial or a rerun
with the same name continues where it stopped. (The loop itself rewrites ``history.jsonl`` from the restored
state.) Every rank reports; only rank 0 attaches the checkpoint (notes/ray-2.60.md).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

STATE_FILE = "state.pt"  # the loop's resumable state inside a Ray checkpoint folder

__all__ = ["STATE_FILE", "TrainReporter", "TuneReporter", "flat_scalars"]


def flat_scalars(metrics: dict, prefix: str = "") -> dict:
    """Scalars of ``metrics`` with nested dicts flattened to ``outer/inner`` keys (lists are left out)."""
    out: dict = {}
    for k, v in metrics.items():
        if isinstance(v, dict):
            out.update(flat_scalars(v, f"{prefix}{k}/"))
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[f"{prefix}{k}"] = v
    return out


class TrainReporter:
    """``ray.train.report`` / ``ray.train.get_checkpoint`` (Ray Train workers)."""

    def __init__(self, run_dir: str | Path | None = None):
        self.run_dir = None if run_dir is None else str(run_dir)
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
        m = flat_scalars(metrics)
        if self.run_dir is not None:
            m["run_dir"] = self.run_dir
        if make_state is None or self._rank() != 0:
            self._report(m)
            return
        import torch

        with tempfile.TemporaryDirectory(prefix="twohead-ckpt-") as d:
            torch.save(make_state(), Path(d) / STATE_FILE)
            self._report(m, checkpoint=self._checkpoint(d))


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
