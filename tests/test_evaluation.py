"""twohead.evaluation: in a DDP run every rank scores its shard and all get the report of the whole split.

Two real gloo processes (torch.multiprocessing) evaluate a real two-head model on a 203-image split; the report
must equal the single-process report of the same model and split, with each rank having scored only its half.
"""

from __future__ import annotations

import pickle
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from twohead.evaluation import shard_split

REPO = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    import numpy as np
    import torch
    import torch.distributed as dist

    from twohead.config import load_config
    from twohead.data import LTData, Split
    from twohead.evaluation import evaluate
    from twohead.model import create_model

    def build():
        rng = np.random.default_rng(0)
        counts = np.array([40, 30, 20, 12, 8, 6, 4, 3, 2, 2])
        train = Split(np.repeat(np.arange(10), counts), np.arange(counts.sum()), images=np.zeros((counts.sum(), 1, 1, 3), np.uint8))
        test = Split(rng.integers(0, 10, 203), np.arange(203), images=rng.integers(0, 256, (203, 32, 32, 3), dtype=np.uint8))
        data = LTData("synthetic", [str(c) for c in range(10)], 10, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), train, None, test)
        cfg = load_config(preset="smoke", overrides=["optim.device=cpu", "method.u=4"])
        torch.manual_seed(0)
        model = create_model(cfg, data.class_counts, 32)
        # BatchNorm statistics of these images (an untrained net's defaults predict one class for every image).
        x = (torch.from_numpy(test.images).permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
        with torch.no_grad():
            for _ in range(20):
                model.outputs(x)
        return cfg, data, model.eval()

    def counted(model, seen):
        inner = model.outputs
        def outputs(x):
            seen.append(int(x.shape[0]))
            return inner(x)
        model.outputs = outputs

    def worker(rank, world, port, out):
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        cfg, data, model = build()
        seen = []
        counted(model, seen)
        rep = evaluate(model, data.test, data, cfg, torch.device("cpu"), distributed=True, batch_size=32)
        with open(f"{out}/rank{rank}.pkl", "wb") as f:
            pickle.dump({"report": rep, "seen": sum(seen)}, f)
        dist.destroy_process_group()

    if __name__ == "__main__":
        out, port = sys.argv[1], int(sys.argv[2])
        cfg, data, model = build()
        with open(f"{out}/single.pkl", "wb") as f:
            pickle.dump(evaluate(model, data.test, data, cfg, torch.device("cpu"), batch_size=32), f)
        torch.multiprocessing.spawn(worker, args=(2, port, out), nprocs=2)
    """
)


def test_shards_partition_the_split_without_copying():
    from twohead.data import Split

    images = np.arange(7 * 2 * 2 * 3, dtype=np.uint8).reshape(7, 2, 2, 3)
    split = Split(np.arange(7) % 3, np.arange(100, 107), images=images)
    a, b = shard_split(split, 0, 2), shard_split(split, 1, 2)
    assert a.ids.tolist() == [100, 102, 104, 106] and b.ids.tolist() == [101, 103, 105]
    assert np.shares_memory(a.images, images) and a.labels.tolist() == [0, 2, 1, 0]
    assert shard_split(split, 0, 1) is split
    files = Split(np.zeros(5), np.arange(5), files=[f"f{i}" for i in range(5)])
    assert shard_split(files, 1, 2).files == ["f1", "f3"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_evaluation_equals_the_single_process_report(tmp_path):
    script = tmp_path / "ddp_eval.py"
    script.write_text(SCRIPT)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path), str(_free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    single = pickle.loads((tmp_path / "single.pkl").read_bytes())
    ranks = [pickle.loads((tmp_path / f"rank{r}.pkl").read_bytes()) for r in (0, 1)]
    assert [r["seen"] for r in ranks] == [102, 101]  # each rank scored only its shard
    for r in ranks:
        rep = r["report"]
        assert rep["num_samples"] == 203
        assert rep["confusion"] == single["confusion"]
        for key in ("top1", "many", "medium", "few", "worst_class", "by_inference", "posthoc", "ece", "nll"):
            assert rep[key] == pytest.approx(single[key]), key
    assert len({p for row in single["confusion"] for p, n in enumerate(row) if n}) > 1  # not a constant prediction
