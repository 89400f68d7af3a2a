"""What to reproduce: the tables, their rows, and the (method, imbalance, seed) runs in launch order."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twohead.config import METHODS, RESULT_NEUTRAL, ConfigError, TrainConfig, load_config

__all__ = ["TableSpec", "TABLES", "METHOD_LABELS", "RunSpec", "plan_runs", "of_table", "changes_results", "RESERVED"]

# Keys the plan sets itself: --set must not override them (use --methods / --imbalances / --seeds / --work).
RESERVED = {"method.name", "data.imbalance", "optim.seed", "data.dataset", "run.out", "run.name"}


def changes_results(key: str) -> bool:
    """Whether a ``--set`` key changes a run's results (then it renames the run and is listed as a deviation);
    the rule is :func:`twohead.config.result_identity`'s."""
    return not (key.startswith("run.") or key in RESULT_NEUTRAL)


# ----------------------------------------------------------------------------------------------------------
# What to run
# ----------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TableSpec:
    name: str
    title: str
    kind: str  # "table1" | "ablation" | "paired" (rows against CE, seed by seed)
    dataset: str  # data.dataset of every run
    preset: str  # load_config preset
    methods: tuple[str, ...]  # rows, in print order
    core: tuple[str, ...]  # rows launched first
    imbalances: tuple[float, ...] = (100.0, 50.0, 10.0)
    # A recipe other than the paper's names its runs and its table file with this tag ("cpu": ce-imb100-s0-cpu,
    # cifar10-lt-cpu.md), so they never mix with the paper-recipe runs of the same dataset.
    scale: str = ""


TABLES: dict[str, TableSpec] = {
    # Every Table 1 row the toolkit implements, in the paper's row order (single-strategy group, then hybrid);
    # DRS, BBN, MiSLAS and Hybrid-SC are not implemented.
    "cifar10-lt": TableSpec(
        name="cifar10-lt",
        title="CIFAR-10-LT: paper Table 1, reproduced",
        kind="table1",
        dataset="cifar10-lt",
        preset="cifar10-lt",
        methods=("ce", "focal", "mixup", "cb", "ldam", "twohead", "cb_focal", "ldam_drw", "twohead_full"),
        core=("ce", "twohead", "twohead_full"),
    ),
    "cifar10-lt-ablation": TableSpec(
        name="cifar10-lt-ablation",
        title="Two-head ablation (paper Table 4), run on CIFAR-10-LT",
        kind="ablation",
        dataset="cifar10-lt",
        preset="cifar10-lt",
        methods=("ce", "fbh_only", "cdh_only", "twohead"),
        core=("ce", "twohead"),
    ),
    # The reduced scale a 2-core CPU can run to the end (preset cifar10-lt-cpu: ResNet-8, 30 epochs, the paper's
    # schedule scaled): Table 1's CE / Ours / Ours-Full and Table 4's FBH-only / CDH-only, every row paired with CE
    # seed by seed. `--imbalances 100,10` adds imbalance 10.
    "cifar10-lt-cpu": TableSpec(
        name="cifar10-lt-cpu",
        title="CIFAR-10-LT at reduced scale: Table 1's core rows and the ablation, paired by seed",
        kind="paired",
        dataset="cifar10-lt",
        preset="cifar10-lt-cpu",
        methods=("ce", "twohead", "twohead_full", "fbh_only", "cdh_only"),
        core=("ce", "twohead", "twohead_full"),
        imbalances=(100.0,),
        scale="cpu",
    ),
}

METHOD_LABELS = {
    "ce": "CE",
    "focal": "Focal",
    "cb": "CB",
    "cb_focal": "CB+Focal",
    "ldam": "LDAM",
    "ldam_drw": "LDAM-DRW",
    "mixup": "Mixup",
    "twohead": "Ours (two-head)",
    "twohead_full": "Ours-Full (two-head + mixup + re-weighting)",
    "fbh_only": "FBH only",
    "cdh_only": "CDH only",
}


@dataclass(frozen=True)
class RunSpec:
    """One (method, imbalance, seed) run of a table, with the overrides that define it."""

    dataset: str
    preset: str
    method: str
    imbalance: float
    seed: int
    tag: str  # "" for the paper recipe, else the table's scale, "e<E>" and/or a hash of the result-changing overrides
    overrides: tuple[tuple[str, Any], ...]  # applied after the preset (schedule scaling and --set values)
    priority: tuple = ()
    sets: tuple[tuple[str, Any], ...] = ()  # the --set values alone (named in the table's notes)

    @property
    def name(self) -> str:
        base = f"{self.method}-imb{self.imbalance:g}-s{self.seed}"
        return f"{base}-{self.tag}" if self.tag else base

    def config(self, work: Path) -> TrainConfig:
        """The validated config of this run, writing into ``work/<dataset>/<name>``."""
        ov: dict[str, Any] = dict(self.overrides)
        # run.test_curve: the best-over-epochs column (the baselines' protocol) needs test top-1 per late epoch.
        ov = {"run.test_curve": True, **ov}
        ov.update(
            {
                "method.name": self.method,
                "data.imbalance": self.imbalance,
                "optim.seed": self.seed,
                "run.out": str(Path(work).resolve() / self.dataset),
                "run.name": self.name,
            }
        )
        return load_config(preset=self.preset, overrides=ov)


def of_table(table: TableSpec, specs: Sequence[RunSpec]) -> list[RunSpec]:
    """The runs that belong to ``table``: its dataset and its recipe (a reduced-scale table never shows the paper
    recipe's runs of the same dataset, nor they its)."""
    return [sp for sp in specs if sp.dataset == table.dataset and sp.preset == table.preset]


def _parse_sets(sets: Sequence[str]) -> dict[str, Any]:
    import yaml

    out: dict[str, Any] = {}
    for item in sets:
        if "=" not in item:
            raise ConfigError(f"--set {item!r} must look like section.key=value")
        k, v = (s.strip() for s in item.split("=", 1))
        if k in RESERVED:
            raise ConfigError(f"--set {k} is chosen by the plan; use --methods / --imbalances / --seeds / --work instead")
        try:
            out[k] = yaml.safe_load(v) if v != "" else ""
        except yaml.YAMLError:
            out[k] = v
    return out


def _scaled_schedule(base: TrainConfig, epochs: int, user: Mapping[str, Any]) -> dict[str, Any]:
    """``--epochs E``: the paper's 200-epoch schedule shrunk (or stretched) proportionally -- milestones, warm-up and
    the deferred re-weighting epoch -- unless the user set those keys."""
    e0 = base.optim.epochs
    out: dict[str, Any] = {"optim.epochs": epochs}
    if epochs == e0:
        return out
    f = epochs / e0
    if "optim.milestones" not in user:
        out["optim.milestones"] = sorted({max(1, round(m * f)) for m in base.optim.milestones if max(1, round(m * f)) < epochs})
    if "optim.warmup_epochs" not in user:
        w = round(base.optim.warmup_epochs * f)
        out["optim.warmup_epochs"] = w if w < epochs else 0
    if "method.drw_epoch" not in user:
        out["method.drw_epoch"] = round(base.method.drw_epoch * f)
    return out


def _tag(epochs: int | None, base_epochs: int, user: Mapping[str, Any]) -> str:
    parts = []
    if epochs is not None and epochs != base_epochs:
        parts.append(f"e{epochs}")
    changing = {k: user[k] for k in sorted(user) if changes_results(k)}
    if changing:
        parts.append(hashlib.sha1(json.dumps(changing, sort_keys=True, default=str).encode()).hexdigest()[:6])
    return "-".join(parts)


def plan_runs(
    tables: Sequence[str],
    *,
    methods: Sequence[str] | None = None,
    imbalances: Sequence[float] | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int | None = None,
    sets: Sequence[str] = (),
    work: str | Path = "runs/reproduce",
) -> list[RunSpec]:
    """The runs of ``tables`` (deduplicated: the ablation's CE and two-head rows are Table 1's), in launch order.

    Order: per table (in the order given), the table's core rows at its first imbalance, then its other rows there,
    then the core rows at the other imbalances, then the rest; inside each tier seed-major (every method's seed 0
    before any seed 1), so a run cut short by a time budget still covers every important cell once.
    Every run's config is built and validated here: a bad ``--set`` fails before anything is launched.
    """
    if not tables:
        raise ConfigError("name at least one --table; known: " + ", ".join(TABLES))
    for t in tables:
        if t not in TABLES:
            raise ConfigError(f"--table {t!r} is unknown; known: {', '.join(TABLES)}")
    if methods is not None:
        for m in methods:
            if m not in METHODS:
                raise ConfigError(f"--methods {m!r} is unknown; known: {', '.join(METHODS)}")
    if not seeds:
        raise ConfigError("--seeds is empty")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs {epochs} must be >= 1")
    user = _parse_sets(sets)
    out: dict[str, RunSpec] = {}
    for ti, tname in enumerate(tables):
        t = TABLES[tname]
        base = load_config(preset=t.preset)
        ov = dict(user)
        if epochs is not None:
            ov.update(_scaled_schedule(base, epochs, user))
        tag = "-".join(x for x in (t.scale, _tag(epochs, base.optim.epochs, user)) if x)
        rows = tuple(methods) if methods is not None else t.methods
        imbs = tuple(float(b) for b in (imbalances if imbalances is not None else t.imbalances))
        for ii, b in enumerate(imbs):
            for mi, m in enumerate(rows):
                tier = 2 * (ii > 0) + (m not in t.core)
                for s in seeds:
                    spec = RunSpec(
                        t.dataset,
                        t.preset,
                        m,
                        b,
                        int(s),
                        tag,
                        tuple(sorted(ov.items())),
                        (ti, tier, int(s), ii, mi),
                        tuple(sorted(user.items())),
                    )
                    if spec.name not in out:
                        spec.config(Path(work))  # validate now
                        out[spec.name] = spec
    return sorted(out.values(), key=lambda r: r.priority)
