"""The `twohead` CLI end to end on real CIFAR-10 from $TWOHEAD_DATA (the smoke preset), plus bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from twohead.cli import main


def run_cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "twohead.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TQDM_DISABLE": "1", **(env or {})},
        timeout=900,
    )


def test_smoke_train_then_eval_on_real_cifar10(tmp_path, data_root):
    out = tmp_path / "runs"
    r = run_cli("train", "--preset", "smoke", "--out", str(out), "--set", "optim.epochs=3", "--set", "optim.milestones=[2]")
    assert r.returncode == 0, r.stderr[-2000:]
    (metrics_file,) = out.glob("*/metrics.json")
    m = json.loads(metrics_file.read_text())
    for key in ("top1", "per_class_recall", "many", "medium", "few"):
        assert key in m
    assert len(m["per_class_recall"]) == 10
    # Every K-to-C reading and post-hoc variant, from one pass; the headline is the default reading (max).
    assert set(m["by_inference"]) == {"max", "sum", "fuse", "fbh"} and m["by_inference"]["max"] == m["top1"]
    assert set(m["posthoc"]) == {"la_tau0.5", "la_tau1.0", "la_tau1.5", "la_tau2.0", "taunorm0.5", "taunorm1.0"}
    history = [json.loads(x) for x in (metrics_file.parent / "history.jsonl").read_text().splitlines()]
    assert all(
        set(h["val_by_inference"]) == set(m["by_inference"]) and set(h["val_posthoc"]) == set(m["posthoc"]) for h in history
    )
    assert m["val"]["by_inference"] == history[-1]["val_by_inference"]
    assert m["clusters_per_class"][0] == 10 and m["clusters_per_class"][-1] == 1  # Eq. 3 with u = 10
    assert m["class_counts"][0] > m["class_counts"][-1]  # long-tailed
    e = run_cli("eval", str(metrics_file.parent))
    assert e.returncode == 0, e.stderr[-2000:]
    assert json.loads(e.stdout)["top1"] == pytest.approx(m["top1"])  # same checkpoint, same test subset


def test_describe_prints_the_lr_schedule_and_its_sources(data_root, capsys):
    assert main(["describe", "--preset", "cifar10-lt"]) == 0
    rows = {int(ln.split()[1].rstrip(":")): ln for ln in capsys.readouterr().out.splitlines() if ln.strip().startswith("epoch")}
    want = {0: 0.02, 4: 0.1, 5: 0.1, 119: 0.1, 120: 0.001, 159: 0.001, 160: 1e-5, 199: 1e-5}
    assert sorted(rows) == sorted(want)
    assert {e: float(rows[e].split()[2]) for e in want} == pytest.approx(want)
    assert "warm-up not in the paper; LDAM-DRW and BBN" in rows[0]
    assert "BBN's LR_FACTOR 0.01" in rows[120] and "(120, 160)" in rows[160] and "paper Sec. 3.1" in rows[5]


def test_describe_prints_ldam_counts_and_eq3(data_root, capsys):
    assert main(["describe", "--preset", "cifar10-lt", "--set", "data.val_per_class=0"]) == 0
    out = capsys.readouterr().out
    assert "train 12406  classes 10" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()]
    counts = [int(r[-2]) for r in rows]
    assert counts == [int(5000 * 0.01 ** (c / 9)) for c in range(10)]
    assert [int(r[-1]) for r in rows][0] == 10


@pytest.mark.parametrize(
    "args,match",
    [
        (["--set", "method.u=0"], "method.u=0: input should be greater than or equal to 1"),
        (["--set", "method.alpha=1.5"], "method.alpha=1.5: input should be less than or equal to 1"),
        (["--set", "method.lam=-1"], "method.lam=-1: input should be greater than or equal to 0"),
        (["--set", "model.backbone=resnet7"], "model.backbone='resnet7': unknown backbone; registered:"),
        (["--set", "data.dataset=svhn"], "data.dataset='svhn': input should be 'cifar10-lt'"),
        (["--set", "method.name=bbn"], "method.name='bbn': input should be 'ce'"),
        (["--set", "data.root=/nonexistent/twohead"], "/nonexistent/twohead"),
    ],
)
def test_bad_input_exits_2_naming_the_problem_and_writes_nothing(tmp_path, args, match, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--preset", "smoke", "--out", str(out), *args]) == 2
    assert match in capsys.readouterr().err
    assert not out.exists()


def test_corrupt_image_is_named(tmp_path, capsys):
    # a folder dataset with one truncated PNG: the error names the file; nothing is written
    root = tmp_path / "imgs"
    for split, n in (("train", 6), ("test", 2)):
        for c in ("a", "b"):
            d = root / split / c if split == "test" else root / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(np.full((32, 32, 3), 40 * i, np.uint8)).save(d / f"{i}.png")
    (root / "a" / "3.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    out = tmp_path / "runs"
    rc = main(
        [
            "train",
            "--out",
            str(out),
            "--set",
            "data.dataset=folder",
            "--set",
            f"data.path={root}",
            "--set",
            "data.val_per_class=0",
            "--set",
            "method.u=2",
            "--set",
            "optim.epochs=1",
            "--set",
            "optim.milestones=[]",
            "--set",
            "optim.warmup_epochs=0",
        ]
    )
    assert rc == 2
    assert "3.png" in capsys.readouterr().err
    assert not out.exists()
