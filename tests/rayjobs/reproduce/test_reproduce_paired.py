"""The reduced-scale CPU table (``rayjobs.reproduce --table cifar10-lt-cpu``): its recipe's schedule, its plan, the
paired statistics and the Markdown built from hand-made run JSONs (expected values worked out by hand below)."""

from __future__ import annotations

import json
import math

import pytest

from rayjobs.reproduce import Runner, plan_runs, slim_path, slim_result, write_report
from rayjobs.reproduce.paired import best_on_test, paired_rows, val_chosen
from rayjobs.reproduce.results import lr_by_epoch
from twohead.config import load_config
from twohead.schedule import lr_at

COUNTS = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]
# The schedule worked out by hand from the paper's (lr 0.1, x0.01 at epochs 120 and 160 of 200, 5 warm-up epochs)
# scaled by 30/200: milestones 18 and 24, warm-up round(0.75) = 1 epoch whose rate is 0.1 * (0 + 1) / 1.
HAND_LR = [0.1] * 18 + [1e-3] * 6 + [1e-5] * 6


# ------------------------------------------------------------------------------------------------ the recipe
def test_cpu_recipe_is_the_papers_schedule_scaled_to_30_epochs():
    cfg = load_config(preset="cifar10-lt-cpu")
    assert (cfg.data.dataset, cfg.data.imbalance, cfg.model.backbone) == ("cifar10-lt", 100.0, "resnet8")
    assert (cfg.optim.epochs, cfg.optim.batch_size, cfg.optim.lr, cfg.optim.weight_decay) == (30, 128, 0.1, 2e-4)
    assert (list(cfg.optim.milestones), cfg.optim.warmup_epochs, cfg.method.drw_epoch) == ([18, 24], 1, 24)
    assert (cfg.data.val_per_class, cfg.data.eval_fraction, cfg.data.train_fraction) == (20, 1.0, 1.0)
    got = [lr_at(cfg, e) for e in range(30)]
    assert len(got) == len(HAND_LR) and all(math.isclose(a, b, rel_tol=1e-12) for a, b in zip(got, HAND_LR))


def test_cpu_recipe_equals_the_paper_recipe_shrunk_by_reproduce_epochs(tmp_path):
    """The preset is what ``--epochs 30`` makes of the paper's recipe plus ResNet-8: one scaling rule, not two."""
    (shrunk,) = plan_runs(["cifar10-lt"], methods=["twohead_full"], imbalances=[100], seeds=[0], epochs=30, work=tmp_path)
    (cpu,) = plan_runs(["cifar10-lt-cpu"], methods=["twohead_full"], seeds=[0], work=tmp_path)
    a, b = shrunk.config(tmp_path), cpu.config(tmp_path)
    assert (list(a.optim.milestones), a.optim.warmup_epochs, a.method.drw_epoch) == (
        list(b.optim.milestones),
        b.optim.warmup_epochs,
        b.method.drw_epoch,
    )
    assert a.optim.epochs == b.optim.epochs == 30


def test_cpu_plan_rows_seeds_names_and_order(tmp_path):
    specs = plan_runs(["cifar10-lt-cpu"], work=tmp_path)
    assert len(specs) == 15
    assert {(s.method, s.seed) for s in specs} == {
        (m, s) for m in ("ce", "twohead", "twohead_full", "fbh_only", "cdh_only") for s in (0, 1, 2)
    }
    assert all(s.name == f"{s.method}-imb100-s{s.seed}-cpu" for s in specs)
    # Table 1's core rows first, seed-major: every one of CE / Ours / Ours-Full seed 0 before any seed 1.
    assert [s.name for s in specs[:4]] == [
        "ce-imb100-s0-cpu",
        "twohead-imb100-s0-cpu",
        "twohead_full-imb100-s0-cpu",
        "ce-imb100-s1-cpu",
    ]
    assert {s.method for s in specs[9:]} == {"fbh_only", "cdh_only"}
    # Every row of a seed draws that seed's cluster split, the pairing's premise.
    assert {s.config(tmp_path).cluster_seed for s in specs if s.seed == 2} == {2}
    # The paper recipe's runs keep their own names: both tables in one plan never share a run.
    both = plan_runs(["cifar10-lt", "cifar10-lt-cpu"], methods=["ce"], imbalances=[100], seeds=[0], work=tmp_path)
    assert sorted(s.name for s in both) == ["ce-imb100-s0", "ce-imb100-s0-cpu"]


# ------------------------------------------------------------------------------------------------ statistics
def _res(method: str, seed: int, top1: float, *, val: float = 40.0, val_ph=None, ph=None) -> dict:
    return {
        "run": f"{method}-s{seed}",
        "method": method,
        "seed": seed,
        "top1": top1,
        "posthoc": ph if ph is not None else {"la_tau1.0": top1 + 2.0, "la_tau1.5": top1 + 3.0},
        "val": {"top1": val, "posthoc": val_ph if val_ph is not None else {"la_tau1.0": val + 1.0, "la_tau1.5": val + 0.5}},
    }


def test_paired_differences_are_taken_seed_by_seed():
    res = [_res("ce", s, v) for s, v in zip((0, 1, 2), (50.0, 52.0, 54.0))]
    res += [_res("twohead", s, v) for s, v in zip((0, 1, 2), (55.0, 56.0, 60.0))]
    res += [_res("fbh_only", s, v) for s, v in zip((0, 1, 2), (49.0, 53.0, 55.0))]
    res += [_res("cdh_only", 1, 51.0)]
    ce, th, fbh, cdh = paired_rows(res, ["ce", "twohead", "fbh_only", "cdh_only", "twohead_full"])
    assert ce.diffs == {} and ce.mean_std == (52.0, 2.0)
    # 55-50, 56-52, 60-54 = 5, 4, 6: mean 5, sample std 1; wins on all three seeds.
    assert th.diffs == {0: 5.0, 1: 4.0, 2: 6.0} and th.diff_mean_std == (5.0, 1.0) and th.wins == 3
    # -1, +1, +1: mean 1/3, sample std sqrt(((4/3)^2 + 2 (2/3)^2) / 2) = sqrt(4/3).
    m, sd = fbh.diff_mean_std
    assert math.isclose(m, 1 / 3) and math.isclose(sd, math.sqrt(4 / 3)) and fbh.wins == 2
    # A row with one seed pairs with that seed only; its std is undefined.
    assert cdh.diffs == {1: -1.0} and cdh.diff_mean_std == (-1.0, None) and cdh.wins == 0


def test_two_results_of_one_method_and_seed_are_refused():
    with pytest.raises(ValueError, match="two results for method 'ce' seed 0"):
        paired_rows([_res("ce", 0, 50.0), _res("ce", 0, 51.0)], ["ce"])


def test_post_hoc_variant_is_chosen_on_validation_never_on_test():
    # Validation prefers la_tau1.0 (41 > 40.5 > 40) although la_tau1.5 is better on test: the test value of la_tau1.0.
    assert val_chosen(_res("ce", 0, 50.0)) == ("la_tau1.0", 52.0)
    # No variant beats the default reading on validation (a tie keeps the default): the default's test top-1.
    tie = _res("ce", 0, 50.0, val=40.0, val_ph={"la_tau1.0": 40.0, "la_tau1.5": 39.0})
    assert val_chosen(tie) == ("default", 50.0)
    # Best on test (reference only): la_tau1.5's mean over the runs, 50+3 and 54+3.
    assert best_on_test([_res("ce", 0, 50.0), _res("ce", 1, 54.0)]) == ("la_tau1.5", 55.0)
    assert best_on_test([_res("ce", 0, 50.0, ph={"la_tau1.0": 49.0})]) == ("default", 50.0)


def test_lr_by_epoch_reads_the_history_last_line_of_each_epoch_wins(tmp_path):
    h = tmp_path / "history.jsonl"
    lines = [{"epoch": 1, "lr": 0.1}, {"epoch": 2, "lr": 0.1}, {"epoch": 2, "lr": 0.05}, {"epoch": 3, "lr": 0.001}]
    h.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    assert lr_by_epoch(h) == [0.1, 0.05, 0.001]
    assert lr_by_epoch(tmp_path / "missing.jsonl") is None


# ------------------------------------------------------------------------------------------------ the Markdown
def _metrics(spec, top1: float, val: float) -> dict:
    return {
        "run": spec.name,
        "dataset": spec.dataset,
        "method": spec.method,
        "imbalance": spec.imbalance,
        "seed": spec.seed,
        "epochs": 30,
        "top1": top1,
        "many": top1 + 10,
        "medium": top1 - 30,
        "few": None,
        "worst_class": top1 - 40,
        "by_inference": {"max": top1, "sum": top1 - 1.0},
        "posthoc": {"la_tau0.5": top1 + 1.0, "la_tau1.0": top1 + 4.0, "taunorm1.0": top1 + 0.5},
        "val": {"top1": val, "posthoc": {"la_tau0.5": val + 2.0, "la_tau1.0": val + 1.0, "taunorm1.0": val}},
        "per_class_recall": [top1] * 10,
        "class_counts": COUNTS,
        "weight_norms": [1.0] * 10,
        "wall_s": 600.0,
        "device": "cpu",
        "torch": "2.14.1",
        "cpu_threads": 1,
    }


def _table(md: str, index: int) -> list[list[str]]:
    tables, cur = [], []
    for ln in md.splitlines() + [""]:
        if ln.startswith("|"):
            cur.append([c.strip() for c in ln.strip().strip("|").split("|")])
        elif cur:
            tables.append(cur)
            cur = []
    return tables[index]


def _row(md: str, index: int, label: str) -> list[str]:
    return next(r for r in _table(md, index) if r[0] == label)


def test_paired_markdown_from_hand_made_runs(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    specs = plan_runs(["cifar10-lt-cpu"], work=work)
    by = {(s.method, s.seed): s for s in specs}
    values = {"ce": (50.0, 52.0, 54.0), "twohead": (55.0, 56.0, 60.0), "fbh_only": (49.0, 53.0, 55.0)}
    for m, tops in values.items():
        for seed, top1 in enumerate(tops):
            sp = by[(m, seed)]
            d = slim_result(_metrics(sp, top1, val=40.0 + seed), sp.config(work), {"commit": "abc123", "concurrent": 2})
            d["lr_by_epoch"] = HAND_LR if not (m == "fbh_only" and seed == 2) else HAND_LR[:-1] + [0.1]
            p = slim_path(out, sp)
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(json.dumps(d))
    runner = Runner(specs, out=out, work=work)
    runner.refresh()
    written = write_report(["cifar10-lt-cpu"], specs, runner.status, out=out, work=work)
    assert out / "cifar10-lt-cpu.md" in written and not (out / "cifar10-lt-cpu-cpu.md").exists()
    md = (out / "cifar10-lt-cpu.md").read_text()
    header = _table(md, 0)[0]
    assert header[:5] == ["Method", "s0", "s1", "s2", "mean ± std"]
    assert _row(md, 0, "CE")[1:5] == ["50.00", "52.00", "54.00", "52.00 ± 2.00"]
    assert _row(md, 0, "CE")[-1] == "70.36"  # the paper's full-scale CE, for orientation
    ours = _row(md, 0, "Ours (two-head)")
    assert ours[4:11] == ["57.00 ± 2.65", "+5.00", "+4.00", "+6.00", "+5.00 ± 1.00", "3/3", "78.79"]
    fbh = _row(md, 0, "FBH only")
    assert fbh[5:10] == ["-1.00", "+1.00", "+1.00", "+0.33 ± 1.15", "2/3"] and fbh[-1] == "—"
    assert _row(md, 0, "CDH only")[1:5] == ["—", "—", "—", "not run"]
    # Post-hoc chosen on validation: la_tau0.5 (val + 2) in every run, whose test value is top-1 + 1.
    ce_ph = _row(md, 1, "CE")
    assert ce_ph[1:3] == ["53.00 ± 2.00", "+1.00 ± 0.00"] and ce_ph[5] == "s0: la_tau0.5, s1: la_tau0.5, s2: la_tau0.5"
    assert ce_ph[6] == "la_tau1.0: 56.00"  # best on test, reference only: la_tau1.0 = top-1 + 4
    assert _row(md, 1, "Ours (two-head)")[3:5] == ["+5.00 ± 1.00", "3/3"]
    # Every reading and variant, means over seeds.
    assert _table(md, 2)[0] == ["Method", "max", "sum", "fuse", "fbh", "la_tau0.5", "la_tau1.0", "taunorm1.0"]
    assert _row(md, 2, "Ours (two-head)")[1:] == ["57.00", "56.00", "—", "—", "58.00", "61.00", "57.50"]
    assert _row(md, 3, "CE")[1:] == ["62.00", "22.00", "—", "12.00", "3"]
    # The lr note compares each run's applied rate with the schedule and names the one that differs.
    assert "0–17: 0.1; 18–23: 0.001; 24–29: 1e-05" in md  # the 1-epoch warm-up reaches 0.1 at once
    assert "differs in fbh_only-imb100-s2-cpu (8 agree)" in md
    assert "**NOT the paper's recipe: 30 epochs**" in md and "resnet8" in md


def test_validation_picks_may_differ_by_seed_and_row_and_are_paired_by_seed(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    specs = plan_runs(["cifar10-lt-cpu"], methods=["ce", "twohead"], seeds=[0, 1], work=work)
    by = {(s.method, s.seed): s for s in specs}
    # (test top-1, validation posthoc) per run; the test posthoc values are top-1 + 1 (la_tau0.5) and + 4 (la_tau1.0).
    cases = {
        ("ce", 0): (50.0, {"la_tau0.5": 42.0, "la_tau1.0": 41.0, "taunorm1.0": 40.0}),  # la_tau0.5 -> 51
        ("ce", 1): (52.0, {"la_tau0.5": 41.0, "la_tau1.0": 43.0, "taunorm1.0": 40.0}),  # la_tau1.0 -> 56
        ("twohead", 0): (55.0, {"la_tau0.5": 39.0, "la_tau1.0": 38.0, "taunorm1.0": 40.0}),  # ties keep default -> 55
        ("twohead", 1): (58.0, {"la_tau0.5": 40.0, "la_tau1.0": 40.0, "taunorm1.0": 44.0}),  # taunorm1.0 -> 58.5
    }
    for (m, seed), (top1, vph) in cases.items():
        sp = by[(m, seed)]
        met = _metrics(sp, top1, val=40.0)
        met["val"]["posthoc"] = vph
        p = slim_path(out, sp)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(slim_result(met, sp.config(work), {"commit": "abc"})))
    runner = Runner(specs, out=out, work=work)
    runner.refresh()
    write_report(["cifar10-lt-cpu"], specs, runner.status, out=out, work=work)
    md = (out / "cifar10-lt-cpu.md").read_text()
    ce, ours = _row(md, 1, "CE"), _row(md, 1, "Ours (two-head)")
    assert ce[1:3] == ["53.50 ± 3.54", "+2.50 ± 2.12"] and ce[5] == "s0: la_tau0.5, s1: la_tau1.0"
    # Ours corrected minus CE corrected, seed by seed: 55 - 51 = +4, 58.5 - 56 = +2.5.
    assert ours[1] == "56.75 ± 2.47" and ours[3:6] == ["+3.25 ± 1.06", "2/2", "s0: default, s1: taunorm1.0"]


def test_paper_recipe_and_cpu_runs_never_mix_in_a_table(tmp_path):
    out, work = tmp_path / "results", tmp_path / "work"
    specs = plan_runs(["cifar10-lt", "cifar10-lt-cpu"], methods=["ce", "twohead"], imbalances=[100], seeds=[0], work=work)
    for sp in specs:
        cpu = sp.name.endswith("-cpu")
        met = _metrics(sp, 50.0 if cpu else 70.0, val=40.0)
        met["epochs"] = 30 if cpu else 200
        if not cpu:
            met["gpu"] = "NVIDIA H100 80GB HBM3"
        p = slim_path(out, sp)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(slim_result(met, sp.config(work), {"commit": "cpu1" if cpu else "gpu1"})))
    runner = Runner(specs, out=out, work=work)
    runner.refresh()
    write_report(["cifar10-lt", "cifar10-lt-cpu"], specs, runner.status, out=out, work=work)
    cpu_md, gpu_md = (out / "cifar10-lt-cpu.md").read_text(), (out / "cifar10-lt.md").read_text()
    assert _row(cpu_md, 0, "CE")[1] == "50.00" and "commit cpu1." in cpu_md and "gpu1" not in cpu_md
    assert "H100" not in cpu_md and "Runs: 2 of 2 finished." in cpu_md
    assert "70.00 (1)" in gpu_md and "cpu1" not in gpu_md and "Runs: 2 of 2 finished." in gpu_md
    assert cpu_md.startswith(
        "# CIFAR-10-LT at reduced scale: Table 1's core rows and the ablation, paired by seed (resnet8, 30 epochs)"
    )


def test_finished_run_json_records_the_lr_its_history_logged(tmp_path):
    """A run folder with metrics.json + history.jsonl becomes a JSON with lr_by_epoch; a JSON saved before the
    record existed gets it added (nothing else in it changes) while the run folder is there."""
    import yaml

    from rayjobs.reproduce import finished_result, run_dir

    out, work = tmp_path / "results", tmp_path / "work"
    (sp,) = plan_runs(["cifar10-lt-cpu"], methods=["ce"], seeds=[0], work=work)
    cfg = sp.config(work)
    rd = run_dir(work, sp)
    rd.mkdir(parents=True)
    (rd / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    (rd / "metrics.json").write_text(json.dumps(_metrics(sp, 47.2, val=45.0)))
    (rd / "history.jsonl").write_text("".join(json.dumps({"epoch": e + 1, "lr": lr}) + "\n" for e, lr in enumerate(HAND_LR)))
    d = finished_result(sp, out, work, {"commit": "abc"})
    assert d["lr_by_epoch"] == HAND_LR and json.loads(slim_path(out, sp).read_text())["lr_by_epoch"] == HAND_LR
    old = dict(d)
    del old["lr_by_epoch"]
    slim_path(out, sp).write_text(json.dumps(old))
    again = finished_result(sp, out, work)
    assert again == {**old, "lr_by_epoch": HAND_LR} and json.loads(slim_path(out, sp).read_text()) == again


def test_the_cpu_table_end_to_end_on_real_runs(tmp_path, data_root, capsys):
    """The command on real CIFAR-10-LT, shrunk to 2 epochs on 5% of the train subset: two real runs (CE, Ours) of
    one seed, their JSONs with the lr each epoch logged, and the paired table built from them."""
    from rayjobs.reproduce import main

    out, work = tmp_path / "results", tmp_path / "work"
    argv = ["--table", "cifar10-lt-cpu", "--methods", "ce,twohead", "--seeds", "0", "--epochs", "2"]
    argv += ["--set", "data.train_fraction=0.05", "--set", "data.eval_fraction=0.02", "--concurrent", "2"]
    assert main([*argv, "--out", str(out), "--work", str(work)]) == 0
    (table,) = out.glob("cifar10-lt-cpu-e2-*.md")  # the overrides name the runs and the table: -e2-<hash>
    tag = table.stem.removeprefix("cifar10-lt-")
    md = table.read_text()
    for m in ("ce", "twohead"):
        d = json.loads((out / "cifar10-lt" / f"{m}-imb100-s0-{tag}.json").read_text())
        # 2 epochs of the 30-epoch schedule scaled again by --epochs: milestones round(18/15), round(24/15) = 1, 2;
        # 2 is not below 2 epochs and is dropped; warm-up round(1/15) = 0. So: epoch 0 at 0.1, epoch 1 at 0.001.
        assert d["lr_by_epoch"] == pytest.approx([0.1, 1e-3]) and d["epochs"] == 2
        assert set(d["posthoc"]) >= {"la_tau0.5", "la_tau1.0", "la_tau1.5"} and set(d["val"]["posthoc"]) == set(d["posthoc"])
    ce = json.loads((out / "cifar10-lt" / f"ce-imb100-s0-{tag}.json").read_text())
    ours = json.loads((out / "cifar10-lt" / f"twohead-imb100-s0-{tag}.json").read_text())
    assert _row(md, 0, "Ours (two-head)")[3] == f"{ours['top1'] - ce['top1']:+.2f}"  # Method, s0, mean, Δ CE s0
    assert "agrees with it in all 2 runs" in md and "Runs: 2 of 2 finished." in md
