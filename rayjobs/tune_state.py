"""Tune's experiment snapshot, checked against the checkpoints its trials really kept, before a search resumes.

A trial keeps its newest ``num_to_keep`` checkpoints: registering one deletes the oldest at once, while the
driver's experiment snapshot (``experiment_state-*.json``, what ``Tuner.restore`` reads) is only rewritten a moment
later. A driver killed inside that gap leaves a snapshot whose trial resumes from a checkpoint folder that no longer
exists; Ray then fails the trial on every retry ("Could not recover from checkpoint as it does not exist on storage
anymore") and the study records FAIL for a trial that had trained fine. :func:`repoint_missing_checkpoints` points
such a trial at the newest checkpoint its folder still holds (registered after the snapshot, so newer than the one
named), with the metrics Tune recorded for it in ``result.json``; without one the trial starts again, and its run
folder's history is kept beside the new one (:func:`twohead.runs.claim_run_dir`).

It edits the snapshot with Ray's own (de)serialisers, on the files Tune itself wrote (never user input); the
internals it touches (``_CheckpointManager``'s two fields) are those of the pinned Ray version.
"""

from __future__ import annotations

import json
import posixpath
from typing import Any

__all__ = ["repoint_missing_checkpoints"]


def _exists(fs: Any, path: str) -> bool:
    import pyarrow.fs as pafs

    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _checkpoint_dirs(fs: Any, trial_path: str) -> list[str]:
    """The ``checkpoint_<k>`` folders of a trial, oldest first (Tune numbers them in order)."""
    import pyarrow.fs as pafs

    try:
        infos = fs.get_file_info(pafs.FileSelector(trial_path, allow_not_found=True))
    except OSError:
        return []
    names = [posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.Directory]
    return sorted(n for n in names if n.startswith("checkpoint_") and n[len("checkpoint_") :].isdigit())


def _result_of(fs: Any, trial_path: str, checkpoint_dir: str) -> dict:
    """The result Tune recorded with ``checkpoint_dir`` (its ``training_iteration``, time, metrics), or {}."""
    try:
        with fs.open_input_stream(posixpath.join(trial_path, "result.json")) as f:
            lines = f.readall().decode().splitlines()
    except OSError:
        return {}
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if row.get("checkpoint_dir_name") == checkpoint_dir:
            return row
    return {}


def repoint_missing_checkpoints(fs: Any, experiment_path: str) -> list[str]:
    """Repair the newest experiment snapshot in ``experiment_path`` (on pyarrow filesystem ``fs``) as the module
    docstring says; returns one line per trial changed (nothing is written when none is)."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.execution.experiment_state import _find_newest_experiment_checkpoint
    from ray.tune.utils.serialization import TuneFunctionDecoder, TuneFunctionEncoder

    newest = _find_newest_experiment_checkpoint(experiment_path, fs=fs)
    if newest is None:
        return []
    with fs.open_input_stream(newest) as f:
        state = json.loads(f.readall().decode())
    changed: list[str] = []
    for entry in state.get("trial_data", []):
        meta = json.loads(entry[1], cls=TuneFunctionDecoder, allow_cloudpickle=True)
        manager = meta.get("checkpoint_manager")
        latest = getattr(manager, "_latest_checkpoint_result", None)
        if latest is None or latest.checkpoint is None:
            continue
        trial_dir = posixpath.basename(posixpath.dirname(latest.checkpoint.path.rstrip("/")))
        trial_path = posixpath.join(experiment_path, trial_dir)
        named = posixpath.basename(latest.checkpoint.path.rstrip("/"))
        if _exists(fs, posixpath.join(trial_path, named)):
            continue
        kept = [
            r
            for r in manager._checkpoint_results
            if _exists(fs, posixpath.join(trial_path, posixpath.basename(r.checkpoint.path.rstrip("/"))))
        ]
        on_disk = _checkpoint_dirs(fs, trial_path)
        if on_disk and on_disk[-1] > named:
            newer = on_disk[-1]
            kept = [r for r in kept if posixpath.basename(r.checkpoint.path.rstrip("/")) < newer]
            ckpt = Checkpoint(path=posixpath.join(trial_path, newer), filesystem=fs)
            kept.append(_TrainingResult(checkpoint=ckpt, metrics=_result_of(fs, trial_path, newer)))
        manager._checkpoint_results = kept
        manager._latest_checkpoint_result = kept[-1] if kept else None
        entry[1] = json.dumps(meta, cls=TuneFunctionEncoder)
        now = posixpath.basename(kept[-1].checkpoint.path) if kept else "none (it starts again)"
        changed.append(f"{trial_dir}: the snapshot named {named}, which it had already replaced; resuming from {now}")
    if changed:
        tmp = newest + ".repair"
        with fs.open_output_stream(tmp) as f:
            f.write(json.dumps(state).encode())
        fs.move(tmp, newest)
    return changed
