"""rayjobs.bench_stream: the short mode produces its side-by-side table (no speed is asserted), and the DataLoader
reference delivers every row of the shards once."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np


def test_short_mode_prints_the_table_of_all_three_pipelines(tmp_path):
    env = {**os.environ, "RAY_ADDRESS": "", "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS")  # its own local Ray instance on its own cores, not the test session's head
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, "-m", "rayjobs.bench_stream", "--short", "--json", str(out), "--stats", str(tmp_path / "stats.txt")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [ln for ln in r.stdout.splitlines() if ln.startswith("| ") and "img/s" not in ln]
    assert [ln.split("|")[1].split(",")[0].strip() for ln in rows] == ["torch DataLoader", "Ray Data", "Ray Data"]
    assert "file://" in rows[1] and "local S3 server" in rows[2]
    res = json.loads(out.read_text())
    for key in ("dataloader", "ray_file", "ray_s3"):
        (epoch,) = res[key]["epochs"]
        assert epoch["images"] == 256, key  # every generated image delivered once
        assert epoch["batch"] == [[224, 224, 3], "torch.uint8", "torch.int64", "torch.int64"], key
        assert epoch["img_per_s"] > 0 and epoch["first_batch_s"] > 0 and res[key]["peak_pss_mb"]["consumer"] > 0
    assert "MapBatches(decode_shards)" in (tmp_path / "stats.txt").read_text()  # Ray Data's per-operator stats


def test_dataloader_reference_reads_every_row_once_with_its_label(tmp_path):
    from rayjobs.bench.ray_layer import jpeg_dataset
    from rayjobs.bench.stream import ShardLoader

    m = jpeg_dataset(f"file://{tmp_path}/ds", 40, width=128, height=96, num_classes=10, rows_per_shard=16)
    # image i has class i % 10; the ids are 0..39: check through the pixels' source (labels and ids travel together)
    dl = ShardLoader(m, batch=8).loader(2)
    seen = []
    for _ in range(2):
        ids = []
        for x, y, k in dl:
            assert tuple(x.shape[1:]) == (224, 224, 3) and len(x) == len(y) == len(k)
            assert (y == k).all()  # no class division: the cluster id is the class
            ids.append(y.numpy())
        seen.append(np.sort(np.concatenate(ids)))
    expected = np.sort(np.arange(40) % 10)
    assert all(np.array_equal(s, expected) for s in seen)
