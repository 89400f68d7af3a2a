"""rayjobs.reproduce / paper: the plan, the Markdown tables, resume, real packed runs, failure isolation, the time
budget, and the packed CIFAR-10 subset for offline machines (size and identical LT subsets)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from rayjobs.reproduce import (
    TABLES,
    Runner,
    RunSpec,
    finished_result,
    main,
    paper,
    plan_runs,
    slim_path,
    slim_result,
    write_report,
)
from twohead.config import ConfigError

REPO = Path(__file__).resolve().parents[3]
TINY = [
    "--epochs",
    "1",
    "--set",
    "data.train_fraction=0.05",
    "--set",
    "data.eval_fraction=0.02",
    "--imbalances",
    "100",
    "--seeds",
    "0",
]


# ------------------------------------------------------------------------------------------------ paper data
def _numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+", line)]


def test_paper_tables_are_the_papers():
    """Every number of Table 1 and Table 4 in rayjobs.reproduce.paper equals the paper's text, row by row."""
    text = (REPO / "tests" / "data" / "paper-tables.txt").read_text()
    t1 = text[text.index("Group\tMethods") : text.index("Table 4.")]
    rows = {}
    for line in t1.splitlines():
        cells = [c for c in line.split("\t") if c]
        if len(cells) >= 8:
            name = cells[-8]
            rows[name] = [float(c) for c in cells[-6:]]
    assert set(rows) == set(paper.TABLE1["cifar10"]) == set(paper.TABLE1["cifar100"])
    for name, vals in rows.items():
        assert list(paper.TABLE1["cifar10"][name]) == vals[:3], name
        assert list(paper.TABLE1["cifar100"][name]) == vals[3:], name
    t4 = text[text.index("Table 4. Ablation") :]
    body = [ln for ln in t4.splitlines() if "/" in ln and _numbers(ln)]
    keys = [(False, False), (True, False), (False, True), (True, True)]
    assert len(body) == 4
    for key, line in zip(keys, body):
        assert line.count("✓") == sum(key)
        nums = _numbers(line)  # c100/tiny pairs for beta 100, 50, 10
        assert list(paper.TABLE4["cifar100"][key]) == nums[0::2]
        assert list(paper.TABLE4["tiny-imagenet"][key]) == nums[1::2]
    # The lookups the tables use.
    assert paper.table1("cifar10-lt", "ldam_drw", 100).value == 77.03
    assert paper.table1("cifar10-lt", "twohead_full", 10).value == 88.97
    assert paper.table1("cifar10-lt", "fbh_only", 100) is None
    assert paper.table1("cifar10-lt", "ce", 20) is None
    assert paper.table4("cifar100", "cdh_only", 50).value == 49.55


# ------------------------------------------------------------------------------------------------ the plan
def test_reproduce_path_never_imports_ray():
    """The GPU machine has no Ray: the modules the device script runs must not import it."""
    code = (
        "import sys, rayjobs.reproduce, rayjobs.reproduce.pack, rayjobs.reproduce.paper, rayjobs.bench.step, twohead.loop; "
        "assert 'ray' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})


def test_plan_covers_rows_columns_seeds_in_priority_order(tmp_path):
    specs = plan_runs(["cifar10-lt"], work=tmp_path)
    t = TABLES["cifar10-lt"]
    assert {(s.method, s.imbalance, s.seed) for s in specs} == set(product(t.methods, (100.0, 50.0, 10.0), (0, 1, 2)))
    # Every Table 1 row the toolkit implements, plain LDAM included, in the paper's row order.
    assert t.methods == ("ce", "focal", "mixup", "cb", "ldam", "twohead", "cb_focal", "ldam_drw", "twohead_full")
    assert [paper.METHOD_ROWS[m] for m in t.methods] == [r for r in paper.TABLE1["cifar10"] if r in paper.METHOD_ROWS.values()]
    assert len(specs) == len({s.name for s in specs}) == 9 * 3 * 3
    # Imbalance 100, CE / Ours / Ours-Full, seed-major: every method's seed 0 before any seed 1.
    assert [(s.method, s.seed) for s in specs[:9]] == [(m, sd) for sd in (0, 1, 2) for m in ("ce", "twohead", "twohead_full")]
    assert all(s.imbalance == 100 for s in specs[:27])
    assert [s.method for s in specs[9:15]] == ["focal", "mixup", "cb", "ldam", "cb_focal", "ldam_drw"]  # paper order
    assert {s.method for s in specs[27:45]} == set(t.core) and all(s.imbalance != 100 for s in specs[27:])
    assert specs[0].name == "ce-imb100-s0" and specs[0].tag == ""
    cfg = specs[0].config(tmp_path)
    assert (cfg.optim.epochs, cfg.optim.milestones, cfg.data.imbalance, cfg.method.name) == (200, (120, 160), 100.0, "ce")
    assert Path(cfg.run.out) == (tmp_path / "cifar10-lt").resolve()

    # The ablation shares CE and two-head with Table 1; its own rows come after all of Table 1.
    both = plan_runs(["cifar10-lt", "cifar10-lt-ablation"], work=tmp_path)
    assert len(both) == 81 + 2 * 3 * 3
    assert {s.method for s in both[81:]} == {"fbh_only", "cdh_only"}


def test_a_three_seed_plan_draws_three_cluster_splits(tmp_path):
    """The random division follows the run's seed (method.cluster_seed = null), so seeds vary the split too."""
    from twohead.clusters import division_for
    from twohead.data import LTData, Split

    specs = plan_runs(["cifar10-lt"], methods=["twohead"], imbalances=[100], work=tmp_path)
    counts = [50, 20, 5]
    labels = np.repeat(np.arange(3), counts)
    data = LTData(
        name="t",
        class_names=list("abc"),
        num_classes=3,
        image_size=4,
        mean=(0.5,) * 3,
        std=(0.5,) * 3,
        train=Split(labels=labels, ids=np.arange(len(labels)), images=np.zeros((len(labels), 4, 4, 3), np.uint8)),
        val=None,
        test=Split(labels=labels[:3], ids=np.arange(3), images=np.zeros((3, 4, 4, 3), np.uint8)),
    )
    splits = [division_for(sp.config(tmp_path), data)[1] for sp in specs]
    assert [sp.seed for sp in specs] == [0, 1, 2] and [sp.config(tmp_path).cluster_seed for sp in specs] == [0, 1, 2]
    assert len({tuple(s.tolist()) for s in splits}) == 3


def test_plan_epochs_and_overrides_rename_runs_and_scale_the_schedule(tmp_path):
    specs = plan_runs(
        ["cifar10-lt"],
        methods=["ldam_drw"],
        imbalances=[50],
        seeds=[1],
        epochs=10,
        sets=["optim.lr=0.05", "data.num_workers=2"],
        work=tmp_path,
    )
    (spec,) = specs
    assert re.fullmatch(r"ldam_drw-imb50-s1-e10-[0-9a-f]{6}", spec.name)
    cfg = spec.config(tmp_path)
    assert (cfg.optim.epochs, cfg.optim.milestones, cfg.optim.warmup_epochs, cfg.method.drw_epoch, cfg.optim.lr) == (
        10,
        (6, 8),
        0,
        8,
        0.05,
    )
    # A key that does not change results (num_workers) does not rename the run.
    same = plan_runs(
        ["cifar10-lt"], methods=["ldam_drw"], imbalances=[50], seeds=[1], epochs=10, sets=["optim.lr=0.05"], work=tmp_path
    )
    assert same[0].name == spec.name
    with pytest.raises(ConfigError, match="method.name is chosen by the plan"):
        plan_runs(["cifar10-lt"], sets=["method.name=ce"], work=tmp_path)
    with pytest.raises(ConfigError, match="optim.lr=-1"):
        plan_runs(["cifar10-lt"], sets=["optim.lr=-1"], work=tmp_path)
    with pytest.raises(ConfigError, match="nope"):
        plan_runs(["cifar10-lt"], methods=["nope"], work=tmp_path)
    with pytest.raises(ConfigError, match="table"):
        plan_runs(["cifar100-lt"], work=tmp_path)


# ------------------------------------------------------------------------------------------------ tables
def _fake_metrics(spec: RunSpec, top1: float, recall_offset: float = 0.0, epochs: int = 200, best: float | None = None) -> dict:
    """metrics.json as twohead.loop.fit writes it on a GPU (values chosen by the test)."""
    counts = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
    return {
        "run": spec.name,
        "dataset": spec.dataset,
        "method": spec.method,
        "imbalance": spec.imbalance,
        "seed": spec.seed,
        "epochs": epochs,
        "top1": top1,
        "many": top1 + 5,
        "medium": top1 - 20,
        "few": None,
        "worst_class": top1 - 30,
        "by_inference": {"max": top1, "sum": top1 - 2.0},
        "posthoc": {"la_tau1.0": top1 + 1.0, "taunorm1.0": top1 + 0.5},
        "test_best_over_epochs": None if best is None else {"top1": best, "epoch": 170},
        "per_class_recall": [top1 + recall_offset] * 10,
        "class_counts": counts,
        "weight_norms": [1.0 + i / 10 for i in range(10)],
        "wall_s": 30.0,
        "device": "cuda:0",
        "torch": "2.11.0",
        "gpu": "NVIDIA H100 80GB HBM3",
    }


def _fake_result(
    spec: RunSpec, work: Path, top1: float, recall_offset: float = 0.0, epochs: int = 200, best: float | None = None
) -> dict:
    """The per-run JSON a finished run leaves in --out (config: the run's own)."""
    return slim_result(
        _fake_metrics(spec, top1, recall_offset, epochs, best), spec.config(work), {"commit": "abc123", "concurrent": 4}
    )


def _write(out: Path, spec: RunSpec, d: dict) -> None:
    p = slim_path(out, spec)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(d))


def _row(md: str, label: str, section: int = 0) -> list[str]:
    """The cells of the row labelled ``label`` in the ``section``-th Markdown table of ``md``."""
    tables, current = [], []
    for ln in md.splitlines() + [""]:
        if ln.startswith("|"):
            current.append([c.strip() for c in ln.strip().strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    return next(r for r in tables[section] if label in r[:3])


def test_markdown_table_mean_std_paper_and_difference(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    specs = plan_runs(["cifar10-lt", "cifar10-lt-ablation"], work=work)
    by = {(s.method, s.imbalance, s.seed): s for s in specs}
    for seed, top1, best in zip((0, 1, 2), (70.0, 71.0, 72.0), (71.0, 73.0, 72.0)):
        _write(out, by[("ce", 100.0, seed)], _fake_result(by[("ce", 100.0, seed)], work, top1, best=best))
    _write(out, by[("twohead", 100.0, 0)], _fake_result(by[("twohead", 100.0, 0)], work, 80.0, recall_offset=1.0))
    _write(out, by[("fbh_only", 100.0, 0)], _fake_result(by[("fbh_only", 100.0, 0)], work, 75.5))
    runner = Runner(specs, out=out, work=work)
    runner.refresh()
    assert sum(st.state == "done" for st in runner.status.values()) == 5
    written = write_report(
        ["cifar10-lt", "cifar10-lt-ablation"], specs, runner.status, out=out, work=work, archive=tmp_path / "r.tar.gz"
    )
    md = (out / "cifar10-lt.md").read_text()
    # CE at beta=100: mean 71.00, sample std 1.00 over 3 seeds; paper 70.36; difference +0.64.
    # Best-over-epochs (the baselines' protocol) in its own column: mean 72.00, std 1.00 of 71, 73, 72.
    ce = _row(md, "CE")
    assert ce[1:5] == ["71.00 ± 1.00 (3)", "70.36", "+0.64", "72.00 ± 1.00 (3)"]
    assert ce[5:9] == ["not run", "74.81", "—", "—"]
    th = _row(md, "Ours (two-head)")
    assert th[1:5] == ["80.00 (1)", "78.79", "+1.21", "—"]
    assert _row(md, "LDAM-DRW")[2] == "77.03" and _row(md, "Ours-Full (two-head + mixup + re-weighting)")[10] == "88.97"
    assert _row(md, "LDAM")[2] == "73.35"  # plain LDAM is a row of its own
    # Readings table (third table): max / sum / fuse / fbh and the post-hoc columns, means over seeds.
    assert _row(md, "CE", section=2)[1:7] == ["71.00", "69.00", "—", "—", "72.00", "71.50"]
    rows = [r[0] for r in [_row(md, m) for m in ("CE", "Focal", "Mixup", "CB", "LDAM", "Ours (two-head)")]]
    assert rows == ["CE", "Focal", "Mixup", "CB", "LDAM", "Ours (two-head)"]
    assert "fbh_only" not in md and "FBH only" not in md  # ablation rows stay out of Table 1
    assert "**final epoch**" in md and "NOT the paper's recipe" not in md
    assert "`optim.weight_decay` = 0.0002" in md and "`optim.warmup_epochs` = 5" in md and "`data.val_per_class` = 20" in md
    assert "NVIDIA H100 80GB HBM3" in md and "torch 2.11.0" in md and "commit abc123" in md
    assert "Runs: 4 of 81 finished" in md
    assert "multiplied by 0.01 at each of epochs 120, 160" in md
    # The ablation: ours vs our CE, the paper's CIFAR-100 numbers as context, no ours-minus-paper column.
    ab = (out / "cifar10-lt-ablation.md").read_text()
    cells = _row(ab, "FBH only")
    assert cells[:3] == ["✓", "-", "FBH only"]
    assert cells[3:7] == ["75.50 (1)", "+4.50", "43.07", "+4.75"]
    assert "context only" in ab and "Δ" not in ab.split("Notes:")[0].split("|---")[0]
    # Fig. 3 exists (CE and two-head at imbalance 100) and is linked; the archive holds tables, JSONs and figure.
    fig = out / "cifar10-lt" / "fig3-imb100.png"
    assert fig in written and fig.stat().st_size > 10_000 and "cifar10-lt/fig3-imb100.png" in md
    import tarfile

    with tarfile.open(tmp_path / "r.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"results/cifar10-lt.md", "results/cifar10-lt/ce-imb100-s1.json", "results/cifar10-lt/fig3-imb100.png"} <= names


def test_finished_runs_are_not_relaunched(tmp_path, capsys):
    """A run with metrics.json in its run folder (or its JSON in --out) is collected, never launched again."""
    out, work = tmp_path / "results", tmp_path / "work"
    argv = ["--methods", "ce,twohead", *TINY, "--out", str(out), "--work", str(work)]
    specs = plan_runs(
        ["cifar10-lt"],
        methods=["ce", "twohead"],
        imbalances=[100],
        seeds=[0],
        epochs=1,
        sets=["data.train_fraction=0.05", "data.eval_fraction=0.02"],
        work=work,
    )
    ce, th = specs
    rd = work / "cifar10-lt" / ce.name
    rd.mkdir(parents=True)
    (rd / "config.yaml").write_text(ce.config(work).to_yaml())
    (rd / "metrics.json").write_text(json.dumps(_fake_metrics(ce, 42.0, epochs=1)))
    _write(out, th, _fake_result(th, work, 43.0, epochs=1))
    assert main(argv) == 0
    assert not (work / "cifar10-lt" / "logs").exists()  # nothing was launched
    derived = json.loads(slim_path(out, ce).read_text())
    assert derived["top1"] == 42.0 and derived["card"] == "NVIDIA H100 80GB HBM3"
    assert "finished 2/2" in capsys.readouterr().out
    # A result of the same name with another config is never overwritten or silently reused.
    other = plan_runs(
        ["cifar10-lt"],
        methods=["ce"],
        imbalances=[100],
        seeds=[0],
        epochs=1,
        sets=["data.train_fraction=0.05", "data.eval_fraction=0.02"],
        work=work,
    )[0]
    d = json.loads(slim_path(out, other).read_text())
    d["config"]["optim"]["lr"] = 0.5
    slim_path(out, other).write_text(json.dumps(d))
    with pytest.raises(RuntimeError, match="different config"):
        finished_result(other, out, work)


def test_time_budget_launches_nothing_past_it(tmp_path, capsys):
    out, work = tmp_path / "results", tmp_path / "work"
    rc = main(["--methods", "ce,twohead", *TINY, "--out", str(out), "--work", str(work), "--time-budget", "0"])
    assert rc == 0
    assert not (work / "cifar10-lt" / "logs").exists()
    md = next(out.glob("cifar10-lt*.md")).read_text()
    assert "Runs: 0 of 2 finished" in md and "Not run:" in md and "time budget 0 s" in md
    assert _row(md, "CE")[1:4] == ["not run", "70.36", "—"]


# ------------------------------------------------------------------------------------------------ real runs
def test_two_real_runs_packed_concurrently(tmp_path, data_root):
    """ce + twohead on real CIFAR-10-LT (5% of the train subset, 1 epoch) as two processes at once."""
    out, work = tmp_path / "results", tmp_path / "work"
    specs = plan_runs(
        ["cifar10-lt"],
        methods=["ce", "twohead"],
        imbalances=[100],
        seeds=[0],
        epochs=1,
        sets=["data.train_fraction=0.05", "data.eval_fraction=0.02"],
        work=work,
    )
    updates = []
    runner = Runner(
        specs,
        out=out,
        work=work,
        concurrent=2,
        commit="test",
        poll_s=0.2,
        on_update=lambda r: updates.append(sum(st.state == "done" for st in r.status.values())),
    )
    status = runner.run()
    a, b = (status[s.name] for s in specs)
    assert a.state == b.state == "done", (a.reason, b.reason)
    # Both were in flight together: each started before the other ended.
    assert a.started < b.started + b.seconds and b.started < a.started + a.seconds
    # The report is rewritten after every poll that finished a run (both may finish within the same poll).
    assert updates[-1] == 2 and updates == sorted(set(updates))
    for s in specs:
        d = json.loads(slim_path(out, s).read_text())
        full = json.loads((work / "cifar10-lt" / s.name / "metrics.json").read_text())
        assert d["run"] == s.name and d["epochs"] == 1 and d["top1"] == full["top1"]
        assert d["by_inference"] == full["by_inference"] and d["posthoc"] == full["posthoc"]
        assert len(d["per_class_recall"]) == 10 and len(d["weight_norms"]) == 10
        assert d["config"]["method"]["name"] == s.method and d["commit"] == "test" and d["concurrent"] == 2
        assert d["process_s"] > 0 and d["card"].startswith("CPU") and "checkpoint" not in json.dumps(d)
        assert (work / "cifar10-lt" / s.name / "checkpoint.pt").is_file()  # the full run folder stays in --work
    write_report(["cifar10-lt"], specs, status, out=out, work=work)
    md = (out / f"cifar10-lt-{specs[0].tag}.md").read_text()
    assert "NOT the paper's recipe: 1 epochs" in md and "`data.train_fraction=0.05`" in md
    assert (out / "cifar10-lt" / f"fig3-imb100-{specs[0].tag}.png").is_file()


def test_a_failing_run_does_not_stop_the_others(tmp_path, data_root, capsys):
    """u=100000 is harmless for CE but impossible for the class-division head (Eq. 3): twohead fails, CE finishes."""
    out, work = tmp_path / "results", tmp_path / "work"
    rc = main(
        [
            "--methods",
            "ce,twohead",
            *TINY,
            "--set",
            "method.u=100000",
            "--concurrent",
            "2",
            "--out",
            str(out),
            "--work",
            str(work),
        ]
    )
    assert rc == 1
    printed = capsys.readouterr().out
    (ce,) = list((out / "cifar10-lt").glob("ce-imb100-s0-*.json"))
    assert not list((out / "cifar10-lt").glob("twohead-*.json"))
    assert re.search(r"FAILED twohead-imb100-s0-\S+: exit 2: class \d .*u_c=", printed)
    md = next(out.glob("cifar10-lt*.md")).read_text()
    assert "Runs: 1 of 2 finished" in md and re.search(r"- Failed: twohead-imb100-s0-\S+ \(exit 2: class", md)
    assert _row(md, "Ours (two-head)")[1] == "failed" and "`method.u=100000`" in md


def test_sigterm_stops_runs_and_keeps_the_report(tmp_path, data_root):
    out, work = tmp_path / "results", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "rayjobs.reproduce",
            "--methods",
            "ce",
            *TINY,
            "--set",
            "data.train_fraction=0.3",
            "--out",
            str(out),
            "--work",
            str(work),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    log = work / "cifar10-lt" / "logs"
    deadline = time.time() + 60
    while not (log.exists() and any(log.iterdir())) and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, text
    md = next(out.glob("cifar10-lt*.md")).read_text()
    assert "Cut short: ce-imb100-s0" in md and _row(md, "CE")[1] == "cut"


# ------------------------------------------------------------------------------------------------ pack
def test_pack_keeps_only_what_the_runs_read_and_draws_the_same_lt_subsets(tmp_path, data_root, capsys):
    import pyarrow.parquet as pq

    from rayjobs.reproduce.pack import pack_data
    from twohead.config import DataConfig
    from twohead.data import DataError, plan_data

    dest = tmp_path / "pack"
    info = pack_data(dest, data_root, imbalances=(100, 50, 10), val_per_class=(20,))
    full = sum((Path(data_root) / "cifar10" / n).stat().st_size for n in ("train.parquet", "test.parquet"))
    assert info["total_bytes"] < 0.6 * full  # ~20.6k of the 50k train images keep their pixels
    assert info["total_bytes"] == sum((dest / "cifar10" / n).stat().st_size for n in ("train.parquet", "test.parquet"))
    pf = pq.ParquetFile(dest / "cifar10" / "train.parquet")
    src_md = pq.ParquetFile(Path(data_root) / "cifar10" / "train.parquet").schema_arrow.metadata
    assert pf.metadata.num_rows == 50_000 and all(pf.schema_arrow.metadata[k] == v for k, v in src_md.items())
    for b in (100, 50, 10):
        a, c = (plan_data(DataConfig(dataset="cifar10-lt", root=str(r), imbalance=b)) for r in (data_root, dest))
        for split in ("train", "val", "test"):
            assert np.array_equal(getattr(a, split).ids, getattr(c, split).ids), (b, split)
            assert np.array_equal(getattr(a, split).labels, getattr(c, split).labels), (b, split)
    # Same pixels for selected images (head, tail and validation rows).
    for split in ("train", "val"):
        a, c = (
            getattr(plan_data(DataConfig(dataset="cifar10-lt", root=str(r), imbalance=100)), split) for r in (data_root, dest)
        )
        pick = np.r_[0:3, len(a) - 3 : len(a)]
        xa, _ = a.source.decode(a.rows[pick], 32, cache=False)
        xc, _ = c.source.decode(c.rows[pick], 32, cache=False)
        assert np.array_equal(xa, xc)
    # A subset the pack did not keep (imbalance 5) fails loudly on its first missing image, never silently.
    p5 = plan_data(DataConfig(dataset="cifar10-lt", root=str(dest), imbalance=5)).train
    has = ~pf.read(columns=["image"]).column("image").is_null().to_numpy(zero_copy_only=False)
    missing = p5.rows[~has[p5.rows]]
    assert len(missing) > 0
    with pytest.raises(DataError, match="missing image bytes"):
        p5.source.decode(missing[:1], 32, cache=False)
    # The CLI: a missing source is one line, exit 2, nothing written.
    os.environ["TWOHEAD_DATA"], saved = str(tmp_path / "nowhere"), os.environ["TWOHEAD_DATA"]
    try:
        assert main(["--pack", str(tmp_path / "x")]) == 2
    finally:
        os.environ["TWOHEAD_DATA"] = saved
    assert "nowhere/cifar10/train.parquet does not exist" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_ray_flag_runs_the_same_command_as_ray_tasks(tmp_path, ray_session, capsys):
    """--ray: each run is a Ray task (1 CPU here; 1/N GPU on a GPU cluster) executing the same command."""
    out, work = tmp_path / "results", tmp_path / "work"
    rc = main(["--methods", "ce", *TINY, "--ray", "--concurrent", "1", "--out", str(out), "--work", str(work)])
    assert rc == 0, capsys.readouterr().out
    (res,) = list((out / "cifar10-lt").glob("ce-imb100-s0-*.json"))
    slim = json.loads(res.read_text())
    full = json.loads((work / "cifar10-lt" / slim["run"] / "metrics.json").read_text())
    assert slim["top1"] == full["top1"] and slim["config"]["method"]["name"] == "ce"
    assert any((work / "cifar10-lt" / "logs").iterdir())
