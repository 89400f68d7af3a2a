"""Bad input across every command: one clear line naming the input, exit 2, and nothing written or changed.

Each case runs the real command in a subprocess, in a folder of its own that holds the inputs the case needs; the
folder is compared file by file (names, sizes, contents) before and after. A traceback, a second line of output on a
failure, a hang (pytest-timeout) or a new file is a failure of the case.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

GOOD_YAML = "method: {u: 5}\n"
CASES: list[tuple[str, list[str], str]] = [
    # (id, argv after the python executable, regex the error line must match); every case expects exit 2.
    # twohead train: config values and rules
    (
        "u-zero",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "method.u=0"],
        r"method\.u=0: input should be greater than or equal to 1",
    ),
    (
        "alpha-range",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "method.alpha=1.5"],
        r"method\.alpha=1\.5: input should be less than or equal to 1",
    ),
    (
        "lr-inf",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "optim.lr=inf"],
        r"optim\.lr='inf': input should be a finite number",
    ),
    (
        "lr-nan",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "optim.lr=.nan"],
        r"optim\.lr=nan: input should be a finite number",
    ),
    (
        "milestone-past-end",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "optim.epochs=5"],
        r"optim\.milestones=\[8\] has epochs at or past optim\.epochs=5.*set milestones below 5",
    ),
    (
        "drw-past-end",
        [
            "-m",
            "twohead.cli",
            "train",
            "--preset",
            "smoke",
            "--out",
            "o",
            "--set",
            "method.name=ldam_drw",
            "--set",
            "method.drw_epoch=10",
        ],
        r"method\.drw_epoch=10 is not before optim\.epochs=10: ldam_drw's deferred re-weighting would never start",
    ),
    (
        "backbone",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "model.backbone=resnet7"],
        r"model\.backbone='resnet7': unknown backbone; registered: .*resnet32",
    ),
    (
        "dataset",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "data.dataset=svhn"],
        r"data\.dataset='svhn': input should be 'cifar10-lt'",
    ),
    (
        "unknown-key",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "method.uu=3"],
        r"unknown config key 'method\.uu'; allowed method\.\* keys: name, u, alpha",
    ),
    (
        "no-section",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "u20"],
        r"override 'u20' must look like section\.key=value",
    ),
    (
        "int-type",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "method.u=ten"],
        r"method\.u='ten': input should be a valid integer",
    ),
    (
        "inference-no-fbh",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "method.name=cdh_only", "--set", "model.inference=fbh"],
        r"model\.inference=fbh needs the feature-balancing head",
    ),
    (
        "device-cuda",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "optim.device=cuda"],
        r"optim\.device='cuda' but no CUDA device is available; use optim\.device=cpu or auto",
    ),
    ("preset", ["-m", "twohead.cli", "train", "--preset", "nope", "--out", "o"], r"argument --preset: invalid choice: 'nope'"),
    # twohead train: files and folders
    (
        "config-missing",
        ["-m", "twohead.cli", "train", "--config", "missing.yaml", "--out", "o"],
        r"config file 'missing\.yaml' does not exist",
    ),
    (
        "config-broken",
        ["-m", "twohead.cli", "train", "--config", "broken.yaml", "--out", "o"],
        r"config file 'broken\.yaml' is not valid YAML",
    ),
    (
        "config-broken-json",
        ["-m", "twohead.cli", "train", "--config", "broken.json", "--out", "o"],
        r"config file 'broken\.json' is not valid JSON",
    ),
    ("config-duplicate-key", ["-m", "twohead.cli", "train", "--config", "dup.yaml", "--out", "o"], r"duplicate key 'u'"),
    (
        "config-section",
        ["-m", "twohead.cli", "train", "--config", "badsection.yaml", "--out", "o"],
        r"section 'methods' is not one of data, model, method, optim, run",
    ),
    ("out-empty", ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", ""], r"run\.out='': string should have at least"),
    (
        "out-under-file",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "afile/runs"],
        r"cannot be a run folder: .*afile is a file; choose another run\.name or out folder",
    ),
    (
        "name-path",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--name", "../x"],
        r"run\.name='\.\./x': must be a plain folder name",
    ),
    (
        "data-root",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "data.root=nowhere"],
        r"cifar10 train split not found: neither nowhere/cifar10/train\.parquet",
    ),
    (
        "download-offline",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "data.root=dl", "--set", "data.download=true"],
        r"could not download cifar10 into dl/cifar10 \(.*\); without network access, copy train\.parquet",
    ),
    (
        "search-preset",
        ["-m", "rayjobs.search", "--preset", "nope", "--out", "o"],
        r"unknown search-space preset 'nope'; available: cifar10-lt, .*smoke-pareto",
    ),
    ("search-space-file", ["-m", "rayjobs.search", "--space", "missing.yaml", "--out", "o"], r"'missing\.yaml' does not exist"),
    (
        "search-db-timeout",
        ["-m", "rayjobs.search", "--preset", "smoke", "--db-timeout", "0", "--out", "o"],
        r"--db-timeout 0 must be > 0 seconds",
    ),
    (
        "search-num-samples",
        ["-m", "rayjobs.search", "--preset", "smoke", "--out", "o", "--num-samples", "0"],
        r"smoke\.yaml: search: num_samples=0: input should be greater than or equal to 1",
    ),
    (
        "search-set",
        ["-m", "rayjobs.search", "--preset", "smoke", "--out", "o", "--set", "optim.lr=-1"],
        r"--set \['optim\.lr=-1'\]: optim\.lr=-1: input should be greater than 0",
    ),
    (
        "search-download-offline",
        ["-m", "rayjobs.search", "--preset", "smoke", "--out", "o", "--set", "data.root=dl", "--set", "data.download=true"],
        r"could not download cifar10 into dl/cifar10 \(.*\); without network access, copy train\.parquet",
    ),
    (
        "search-storage-url",
        ["-m", "rayjobs.search", "--preset", "smoke", "--out", "o", "--storage", "nosuch://x"],
        r"cannot open Optuna storage nosuch://x",
    ),
    (
        "search-warm-start",
        ["-m", "rayjobs.search", "--preset", "smoke", "--out", "o", "--warm-start", "nowhere"],
        r"--warm-start nowhere: not a search folder \(nowhere/search_space\.yaml is missing\)",
    ),
    (
        "search-retrain-best",
        ["-m", "rayjobs.search", "--retrain-best", "nowhere"],
        r"nowhere is not a search folder: nowhere/search_space\.yaml is missing",
    ),
    ("report-folder", ["-m", "rayjobs.report", "nowhere", "--out", "r"], r"nowhere is not a search folder"),
    (
        "labels-data",
        ["-m", "rayjobs.labels", "--data", "nowhere"],
        r"no prepared dataset at nowhere: nowhere/manifest\.json does not exist .*run rayjobs\.prepare first",
    ),
    ("labels-u", ["-m", "rayjobs.labels", "--data", "nowhere", "--u", "0"], r"argument --u: 0 is not a number of clusters"),
    (
        "train-ray-data",
        ["-m", "rayjobs.train", "--data", "nowhere", "--storage", "o", "--name", "x"],
        r"no prepared dataset at nowhere: nowhere/manifest\.json does not exist",
    ),
    (
        "train-ray-workers",
        ["-m", "rayjobs.train", "--data", "nowhere", "--storage", "o", "--name", "x", "--num-workers", "3-2"],
        r"--num-workers '3-2' must be N >= 1 or MIN-MAX with 1 <= MIN <= MAX",
    ),
    (
        "train-ray-name",
        ["-m", "rayjobs.train", "--data", "nowhere", "--storage", "o", "--name", "../x"],
        r"--name '\.\./x' must be a plain folder name",
    ),
    (
        "search-mlflow-uri",
        ["-m", "rayjobs.search", "--preset", "smoke", "--out", "o", "--mlflow", "nosuch://x"],
        r"--mlflow nosuch://x: cannot use this tracking store .*check the URI or the server",
    ),
    (
        "train-ray-mlflow-uri",
        ["-m", "rayjobs.train", "--data", "nowhere", "--storage", "o", "--name", "x", "--mlflow", "nosuch://x"],
        r"--mlflow nosuch://x: cannot use this tracking store",
    ),
    (
        "train-mlflow-unreachable",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--mlflow", "http://127.0.0.1:9"],
        r"--mlflow http://127\.0\.0\.1:9: cannot use this tracking store .*check the URI or the server",
    ),
    (
        "train-mlflow-folder",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--mlflow", "sqlite:////proc/x/mlflow.db"],
        r"--mlflow .*/proc/x",
    ),
    (
        "train-ray-preset",
        ["-m", "rayjobs.train", "--data", "nowhere", "--storage", "o", "--name", "x", "--preset", "nope"],
        r"unknown preset 'nope'; allowed: cifar10-lt",
    ),
    (
        "u-too-large",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "method.u=5000"],
        r"class 0 has 4980 training samples but needs u_c=5000 non-empty clusters \(Eq\. 3 with u=5000\); lower method\.u",
    ),
    (
        "feature-proj-none",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "o", "--set", "model.feature_proj=none"],
        r"model\.feature_proj=none needs D % C == 0, got D=64, C=10",
    ),
    (
        "parquet-no-path",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "data.dataset=parquet"],
        r"data\.path must name the parquet dataset location",
    ),
    (
        "labels-mixed",
        [
            "-m",
            "twohead.cli",
            "train",
            "--out",
            "o",
            "--set",
            "data.dataset=parquet",
            "--set",
            "data.path=mixed",
            "--set",
            "data.val_per_class=0",
        ],
        r"the 'label' column holds strings in the training data .*train\.parquet but integers in the test data",
    ),
    # twohead eval / describe
    ("eval-missing", ["-m", "twohead.cli", "eval", "norun"], r"run folder norun holds no checkpoint\.pt"),
    ("eval-corrupt", ["-m", "twohead.cli", "eval", "corrupt.pt"], r"corrupt\.pt is not a readable checkpoint"),
    (
        "describe-u",
        ["-m", "twohead.cli", "describe", "--preset", "cifar10-lt", "--set", "method.u=5000"],
        r"needs u_c=5000 non-empty clusters .*lower method\.u",
    ),
    (
        "describe-folder-empty",
        ["-m", "twohead.cli", "describe", "--set", "data.dataset=folder", "--set", "data.path=emptydir"],
        r"emptydir",
    ),
    # twohead predict / export
    ("predict-missing-run", ["-m", "twohead.cli", "predict", "norun", "emptydir"], r"run folder norun holds no checkpoint\.pt"),
    ("predict-corrupt", ["-m", "twohead.cli", "predict", "corrupt.pt", "emptydir"], r"corrupt\.pt is not a readable checkpoint"),
    (
        "export-corrupt",
        ["-m", "twohead.cli", "export", "corrupt.pt", "--out", "m.onnx"],
        r"corrupt\.pt is not a readable checkpoint",
    ),
    # rayjobs.prepare
    (
        "prepare-name",
        ["-m", "rayjobs.prepare", "--out", "ds", "--preset", "smoke", "--name", "../x"],
        r"--name '\.\./x' must be a plain folder name",
    ),
    (
        "prepare-rows",
        ["-m", "rayjobs.prepare", "--out", "ds", "--preset", "smoke", "--rows-per-shard", "0"],
        r"--rows-per-shard 0 must be an integer >= 1",
    ),
    (
        "prepare-threads",
        ["-m", "rayjobs.prepare", "--out", "ds", "--preset", "smoke", "--threads", "0"],
        r"--threads 0 must be an integer >= 1",
    ),
    (
        "prepare-seed",
        ["-m", "rayjobs.prepare", "--out", "ds", "--preset", "smoke", "--shuffle-seed", "-1"],
        r"--shuffle-seed -1 must be >= 0",
    ),
    (
        "prepare-config",
        ["-m", "rayjobs.prepare", "--out", "ds", "--set", "data.imbalance=0.5"],
        r"data\.imbalance=0\.5: input should be greater than or equal to 1",
    ),
    # rayjobs.reproduce
    ("reproduce-methods", ["-m", "rayjobs.reproduce", "--methods", "nope", "--dry-run"], r"--methods 'nope' is unknown"),
    ("reproduce-seeds", ["-m", "rayjobs.reproduce", "--seeds", "a", "--dry-run"], r"--seeds 'a': 'a' is not valid"),
    ("reproduce-empty-seeds", ["-m", "rayjobs.reproduce", "--seeds", ",", "--dry-run"], r"--seeds is empty"),
    (
        "reproduce-reserved",
        ["-m", "rayjobs.reproduce", "--set", "method.name=ce", "--dry-run"],
        r"--set method\.name is chosen by the plan",
    ),
    ("reproduce-epochs", ["-m", "rayjobs.reproduce", "--epochs", "0", "--dry-run"], r"--epochs 0 must be >= 1"),
    ("reproduce-concurrent", ["-m", "rayjobs.reproduce", "--concurrent", "-1", "--dry-run"], r"--concurrent -1 must be >= 1"),
    (
        "reproduce-budget",
        ["-m", "rayjobs.reproduce", "--time-budget", "-5", "--dry-run"],
        r"--time-budget -5 must be >= 0 seconds",
    ),
    ("reproduce-table", ["-m", "rayjobs.reproduce", "--table", "nope"], r"argument --table: invalid choice: 'nope'"),
    (
        "reproduce-set",
        ["-m", "rayjobs.reproduce", "--set", "optim.lr=-1", "--dry-run"],
        r"optim\.lr=-1: input should be greater than 0",
    ),
    # rayjobs.bench
    ("bench-backbone", ["-m", "rayjobs.bench", "--backbones", "resnet7"], r"model\.backbone='resnet7': unknown backbone"),
    ("bench-steps", ["-m", "rayjobs.bench", "--steps", "-1"], r"--steps -1 must be >= 0"),
    ("bench-method", ["-m", "rayjobs.bench", "--methods", "magic"], r"method\.name='magic': input should be 'ce'"),
    ("bench-stream-cores", ["-m", "rayjobs.bench_stream", "--cores", "999"], r"--cores 999 must be 1\.\.\d+"),
    # Hostile inputs a new user meets: outputs that cannot be written (a file on the way; /proc takes no new folder
    # even for root), folders of the wrong kind, half-written or empty files, values of the wrong shape.
    (
        "train-out-unwritable",
        ["-m", "twohead.cli", "train", "--preset", "smoke", "--out", "/proc/twohead-x"],
        r"run folder /proc/twohead-x/\S+: cannot write in /proc \(.+\); choose a folder you can write",
    ),
    (
        "prepare-out-unwritable",
        ["-m", "rayjobs.prepare", "--out", "/proc/twohead-x", "--preset", "smoke"],
        r"--out /proc/twohead-x: cannot write in /proc \(.+\); choose a folder you can write",
    ),
    (
        "prepare-out-file",
        ["-m", "rayjobs.prepare", "--out", "afile", "--preset", "smoke"],
        r"--out \S*afile: \S*afile is a file, not a folder; choose another --out",
    ),
    (
        "prepare-into-run-folder",
        ["-m", "rayjobs.prepare", "--out", ".", "--name", "fakerun", "--preset", "smoke", "--overwrite"],
        r"fakerun holds files that are not a twohead dataset \(checkpoint\.pt, config\.yaml\); choose another",
    ),
    (
        "search-out-unwritable",
        ["-m", "rayjobs.search", "--preset", "smoke", "--out", "/proc/twohead-x"],
        r"--out /proc/twohead-x: cannot write in /proc",
    ),
    ("search-out-file", ["-m", "rayjobs.search", "--preset", "smoke", "--out", "afile"], r"--out \S*afile: \S*afile is a file"),
    (
        "train-ray-storage-unwritable",
        ["-m", "rayjobs.train", "--data", "nowhere", "--storage", "/proc/twohead-x", "--name", "x"],
        r"--storage /proc/twohead-x: cannot write in /proc",
    ),
    (
        "train-ray-data-run-folder",
        ["-m", "rayjobs.train", "--data", "fakerun", "--storage", "o", "--name", "x"],
        r"no prepared dataset at fakerun: .*it holds checkpoint\.pt, config\.yaml: not a dataset folder \(a run or search",
    ),
    (
        "labels-data-run-folder",
        ["-m", "rayjobs.labels", "--data", "fakerun"],
        r"no prepared dataset at fakerun: .*not a dataset folder",
    ),
    ("labels-data-file", ["-m", "rayjobs.labels", "--data", "afile"], r"no prepared dataset at afile: it is a file"),
    (
        "train-ray-data-interrupted",
        ["-m", "rayjobs.train", "--data", "halfds", "--storage", "o", "--name", "x"],
        r"no prepared dataset at halfds: .*an interrupted prepare; rerun rayjobs\.prepare with --overwrite",
    ),
    (
        "reproduce-out-unwritable",
        ["-m", "rayjobs.reproduce", "--methods", "ce", "--seeds", "0", "--epochs", "1", "--out", "/proc/twohead-x"],
        r"--out /proc/twohead-x: cannot write in /proc",
    ),
    (
        "reproduce-work-file",
        ["-m", "rayjobs.reproduce", "--methods", "ce", "--seeds", "0", "--epochs", "1", "--work", "afile"],
        r"--work afile: afile is a file, not a folder; choose another --work",
    ),
    ("eval-truncated", ["-m", "twohead.cli", "eval", "trunc.pt"], r"trunc\.pt is not a readable checkpoint"),
    ("eval-empty-checkpoint", ["-m", "twohead.cli", "eval", "empty.pt"], r"empty\.pt is not a readable checkpoint"),
    ("eval-dataset-folder", ["-m", "twohead.cli", "eval", "halfds"], r"run folder halfds holds no checkpoint\.pt"),
    (
        "config-list",
        ["-m", "twohead.cli", "train", "--config", "toplist.yaml", "--out", "o"],
        r"config file 'toplist\.yaml' must hold a mapping of sections",
    ),
    (
        "config-section-scalar",
        ["-m", "twohead.cli", "train", "--config", "sectscalar.yaml", "--out", "o"],
        r"section 'method' is not one of data, model, method, optim, run holding a mapping",
    ),
    (
        "set-section-only",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "method=5"],
        r"override key 'method' must be section\.key",
    ),
    ("set-bool-for-number", ["-m", "twohead.cli", "train", "--out", "o", "--set", "data.imbalance=true"], r"not true/false"),
    (
        "set-list-for-number",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "method.alpha=[0.5]"],
        r"method\.alpha=\[0\.5\]: input should be a valid number",
    ),
    (
        "parquet-empty",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "data.dataset=parquet", "--set", "data.path=pq_empty"],
        r"cannot read Parquet file pq_empty/train\.parquet: Parquet file size is 0 bytes",
    ),
    (
        "parquet-truncated",
        ["-m", "twohead.cli", "train", "--out", "o", "--set", "data.dataset=parquet", "--set", "data.path=pq_trunc"],
        r"cannot read Parquet file pq_trunc/train\.parquet: .*magic bytes",
    ),
    ("search-space-empty", ["-m", "rayjobs.search", "--space", "empty.yaml", "--out", "o"], r"empty\.yaml: a search space must"),
    ("search-space-list", ["-m", "rayjobs.search", "--space", "toplist.yaml", "--out", "o"], r"got list"),
]


def _inputs(d: Path) -> None:
    """The inputs the cases refer to, relative to their working folder."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    (d / "good.yaml").write_text(GOOD_YAML)
    (d / "broken.yaml").write_text("method: {u: 3\n")
    (d / "broken.json").write_text('{"method": {"u": 3}')
    (d / "dup.yaml").write_text("method:\n  u: 3\n  u: 5\n")
    (d / "badsection.yaml").write_text("methods: {u: 3}\n")
    (d / "afile").write_text("not a folder")
    (d / "corrupt.pt").write_bytes(b"\x80\x02 not a checkpoint")
    (d / "norun").mkdir()
    (d / "fakerun").mkdir()  # a run folder where a dataset is expected
    (d / "fakerun" / "checkpoint.pt").write_bytes(b"weights")
    (d / "fakerun" / "config.yaml").write_text(GOOD_YAML)
    (d / "halfds" / "train").mkdir(parents=True)  # a prepare stopped before its manifest
    (d / "halfds" / "train" / "part-00000.parquet").write_bytes(b"half written")
    (d / "toplist.yaml").write_text("- method\n- optim\n")
    (d / "sectscalar.yaml").write_text("method: 5\n")
    (d / "empty.yaml").write_text("")
    (d / "empty.pt").write_bytes(b"")
    import torch

    buf = io.BytesIO()
    torch.save({"model": torch.zeros(4096)}, buf)
    (d / "trunc.pt").write_bytes(buf.getvalue()[:5000])  # a checkpoint cut mid-write (no atomic rename)
    (d / "emptydir").mkdir()
    (d / "mixed").mkdir()
    png = _png_bytes()
    for split, labels in (("train", ["cat", "dog"] * 4), ("test", [0, 1] * 2)):
        pq.write_table(pa.table({"image": [png] * len(labels), "label": labels}), d / "mixed" / f"{split}.parquet")
    for folder in ("pq_empty", "pq_trunc"):
        (d / folder).mkdir()
    for split in ("train", "test"):
        (d / "pq_empty" / f"{split}.parquet").write_bytes(b"")
        pq.write_table(pa.table({"image": [png] * 8, "label": [0, 1] * 4}), d / "pq_trunc" / f"{split}.parquet")
        whole = (d / "pq_trunc" / f"{split}.parquet").read_bytes()
        (d / "pq_trunc" / f"{split}.parquet").write_bytes(whole[: len(whole) // 2])


def _png_bytes() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _snapshot(d: Path) -> dict[str, str]:
    return {
        str(p.relative_to(d)): (hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir") for p in sorted(d.rglob("*"))
    }


@pytest.mark.parametrize("argv,pattern", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, data_root, argv, pattern):
    _inputs(tmp_path)
    before = _snapshot(tmp_path)
    env = {
        **os.environ,
        "TQDM_DISABLE": "1",
        # no network for the download case: every HTTP(S) request goes to a closed local port
        "https_proxy": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
    }
    r = subprocess.run([sys.executable, *argv], cwd=tmp_path, capture_output=True, text=True, timeout=300, env=env)
    err = [line for line in r.stderr.splitlines() if line.strip() and not line.startswith(("usage:", " "))]

    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    assert len(err) == 1, r.stderr[-2000:]  # argparse's usage line aside, exactly one line
    assert re.search(pattern, err[0]), err[0]
    assert _snapshot(tmp_path) == before  # nothing written, nothing changed


def test_the_table_covers_every_command():
    commands = {c[1][1] if c[1][0] == "-m" else c[1][0] for c in CASES}
    assert {"twohead.cli", "rayjobs.prepare", "rayjobs.reproduce", "rayjobs.bench"} <= commands
    assert {"rayjobs.search", "rayjobs.report", "rayjobs.labels", "rayjobs.train"} <= commands
    assert len(CASES) >= 40
