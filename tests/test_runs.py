"""Run folders and checkpoints: refusing to overwrite, recovering from failed and damaged runs, failed writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from synthetic import synthetic, tiny_cfg

from twohead.config import ConfigError, apply_overrides
from twohead.loop import fit
from twohead.runs import CheckpointError, LocalReporter, RunExistsError, claim_run_dir, load_checkpoint


def test_a_run_folder_under_a_file_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "taken").write_text("a file")
    cfg = tiny_cfg(tmp_path / "taken" / "runs")
    with pytest.raises(RunExistsError, match=r"cannot be a run folder: .*taken is a file; choose another"):
        fit(cfg, data=synthetic())
    assert (tmp_path / "taken").read_text() == "a file"


def test_feature_proj_none_with_d_not_a_multiple_of_c_fails_before_writing(tmp_path):
    cfg = tiny_cfg(tmp_path, **{"model.feature_proj": "none", "run.name": "p"})  # ResNet-32: D = 64, C = 3
    with pytest.raises(ConfigError, match=r"model.feature_proj=none needs D % C == 0, got D=64, C=3"):
        fit(cfg, data=synthetic())
    assert not (tmp_path / "p").exists()


def test_a_failed_runs_leftovers_do_not_block_a_corrected_config(tmp_path):
    """A run that failed before its first checkpoint holds no results: a corrected config may use the folder, and the
    old config and history are kept beside the new ones."""
    out = tmp_path / "r"
    out.mkdir()
    old = tiny_cfg(tmp_path, **{"run.name": "r", "method.u": 2})
    (out / "config.yaml").write_text(old.to_yaml())
    (out / "history.jsonl").write_text('{"epoch": 1}\n')
    new = apply_overrides(old, {"method.u": 3})
    claim_run_dir(out, new, resuming=False)
    assert (out / "config.yaml").read_text() == new.to_yaml()
    kept = sorted(p.name for p in out.iterdir())
    assert kept[0].startswith("config.") and kept[0].endswith(".yaml") and kept[1] == "config.yaml"
    assert any(n.startswith("history.") and n != "history.jsonl" for n in kept)
    # With results (a checkpoint) the same folder is refused to another config, and nothing moves.
    torch.save({"model": {}, "config": new.to_dict(), "class_counts": [1]}, out / "checkpoint.pt")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(RunExistsError, match="holds results of a different config"):
        claim_run_dir(out, apply_overrides(old, {"method.u": 4}), resuming=False)
    assert sorted(p.name for p in out.iterdir()) == before


def test_a_damaged_checkpoint_falls_back_to_the_previous_one(tmp_path):
    data = synthetic()
    cfg = tiny_cfg(tmp_path, **{"run.name": "d", "optim.epochs": 3, "optim.milestones": [2]})
    reference = fit(apply_overrides(cfg, {"run.name": "ref"}), data=data)
    out = tmp_path / "d"
    out.mkdir()

    class StopAfter(LocalReporter):
        def report(self, metrics, make_state):
            super().report(metrics, make_state)
            if metrics["epoch"] == 2:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(cfg, data=data, reporter=StopAfter(out))
    assert load_checkpoint(out / "checkpoint.prev.pt")["epoch"] == 1
    (out / "checkpoint.pt").write_bytes(b"\x00" * 100)  # damaged on disk (torn copy, bad sector, ...)
    with pytest.raises(CheckpointError, match=r"checkpoint.pt is not a readable checkpoint"):
        load_checkpoint(out / "checkpoint.pt")
    result = fit(cfg, data=data)  # resumes from epoch 1: never stuck, nothing deleted
    (aside,) = out.glob("checkpoint.damaged-*.pt")  # kept, named by when it was found
    assert aside.read_bytes() == b"\x00" * 100
    assert result["top1"] == reference["top1"]  # epochs 2-3 retrained exactly
    history = [json.loads(x)["epoch"] for x in (out / "history.jsonl").read_text().splitlines()]
    assert history == [1, 2, 3]


def test_a_checkpoint_that_cannot_be_written_is_one_clear_error_and_leaves_no_temporary_file(tmp_path):
    """A file-size limit stands in for a full disk: torch.save fails mid-write inside the C++ writer."""
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "import torch\n"
        "from twohead.runs import LocalReporter, CheckpointError\n"
        "r = LocalReporter(sys.argv[1])\n"
        "try:\n"
        "    r.report({}, lambda: {'w': torch.zeros(200_000)})\n"
        "except CheckpointError as e:\n"
        "    print(e)\n"
    )
    out = tmp_path / "run"
    out.mkdir()
    r = subprocess.run([sys.executable, "-c", script, str(out)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert f"could not write the checkpoint {out / 'checkpoint.pt'}: file too large" in r.stdout
    assert "rerun the same command to resume" in r.stdout
    assert os.listdir(out) == []  # no .tmp left behind, no truncated checkpoint.pt
