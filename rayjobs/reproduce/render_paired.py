"""The body of a ``paired`` table (the reduced-scale Table 1): every row per seed and its difference to CE seed by
seed, what post-hoc correction chosen on validation adds, every reading and variant, and the class groups. The
statistics are :mod:`.paired`'s; this module only lays them out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from twohead.readings import LA_TAUS, TAU_NORMS

from . import paper
from .cells import READING_COLUMNS, fig_imbalance, group_cells, md_table, mean_of, missing, signed, table_rows
from .paired import PairedRow, best_on_test, by_method_seed, paired_rows, val_chosen
from .plan import METHOD_LABELS, RunSpec, TableSpec
from .run import RunStatus

__all__ = ["render_paired"]


def _seed_cells(row: PairedRow, seeds: Sequence[int], diffs: bool = False) -> list[str]:
    src = row.diffs if diffs else row.values
    return [(signed(src[s]) if diffs else f"{src[s]:.2f}") if s in src else "—" for s in seeds]


def _ms(ms: tuple[float, float | None] | None, with_sign: bool = False) -> str:
    """``mean ± std`` (the std left out for one value), signed for differences."""
    if ms is None:
        return "—"
    m, sd = ms
    return (signed(m) if with_sign else f"{m:.2f}") + (f" ± {sd:.2f}" if sd is not None else "")


def render_paired(
    table: TableSpec, specs: Sequence[RunSpec], status: Mapping[str, RunStatus], *, work: Path, fig: str | None
) -> list[str]:
    """Body of a ``paired`` table: per imbalance, every row per seed and its difference to CE seed by seed, then
    what post-hoc correction chosen on validation adds, every reading and variant, and the class groups."""
    rows = table_rows(table, specs)
    imbs = sorted({sp.imbalance for sp in specs}, key=lambda b: -b)
    seeds = sorted({sp.seed for sp in specs})
    cfg = specs[0].config(work) if specs else None
    out = [
        f"Top-1 accuracy (%) on the balanced CIFAR-10 test set (10,000 images) at the **final epoch** of a "
        f"**reduced-scale** recipe ({cfg.model.backbone if cfg else '?'}, {cfg.optim.epochs if cfg else '?'} epochs; "
        "the paper: ResNet-32, 200 epochs), one column per seed. Every row uses the same seeds, so *Δ CE* is the "
        "difference to the CE run **of the same seed** (same initialisation, data order and augmentation); "
        "*beats CE*: the seeds where it is positive. *paper (full scale)*: Table 1 of the paper, a different "
        "setting, shown for orientation only. No reported number is chosen on test data.",
        "",
    ]
    cells = group_cells(status, table, specs)
    for b in imbs:
        done = [
            st.result
            for sp in specs
            if sp.imbalance == b and (st := status.get(sp.name)) is not None and st.state == "done" and st.result
        ]
        out += [f"### β = {b:g}", ""]
        header = (
            ["Method"]
            + [f"s{s}" for s in seeds]
            + ["mean ± std"]
            + [f"Δ CE s{s}" for s in seeds]
            + ["Δ CE mean ± std", "beats CE", "paper (full scale)"]
        )
        by_row = {r.method: r for r in paired_rows(done, rows)}
        body = []
        for m in rows:
            pc = paper.table1(table.dataset, m, b)
            r = by_row.get(m)
            if r is None:
                body.append(
                    [METHOD_LABELS.get(m, m), *["—"] * len(seeds), missing(cells.get((m, b), []))]
                    + ["—"] * (len(seeds) + 2)
                    + [f"{pc.value:.2f}" if pc else "—"]
                )
                continue
            body.append(
                [METHOD_LABELS.get(m, m), *_seed_cells(r, seeds), _ms(r.mean_std)]
                + (_seed_cells(r, seeds, diffs=True) if m != "ce" else ["—"] * len(seeds))
                + [_ms(r.diff_mean_std, with_sign=True), f"{r.wins}/{len(r.diffs)}" if r.diffs else "—"]
                + [f"{pc.value:.2f}" if pc else "—"]
            )
        out += md_table(header, body, ["left"] + ["right"] * (len(header) - 1))
        # Post-hoc correction chosen per seed on validation, paired with CE chosen the same way.
        chosen = paired_rows(done, rows, value=lambda r: val_chosen(r)[1])
        gain = paired_rows(done, rows, value=lambda r: val_chosen(r)[1] - float(r["top1"]))
        per = by_method_seed(done)
        body = []
        for r in chosen:
            g = next(x for x in gain if x.method == r.method)
            picks = [f"s{s}: {val_chosen(per[r.method][s])[0]}" for s in sorted(per[r.method])]
            best_test = best_on_test(list(per[r.method].values()))
            body.append(
                [
                    METHOD_LABELS.get(r.method, r.method),
                    _ms(r.mean_std),
                    _ms(g.mean_std, with_sign=True),
                    _ms(r.diff_mean_std, with_sign=True) if r.method != "ce" else "—",
                    f"{r.wins}/{len(r.diffs)}" if r.diffs else "—",
                    ", ".join(picks),
                    f"{best_test[0]}: {best_test[1]:.2f}" if best_test else "—",
                ]
            )
        if body:
            out += [
                "",
                f"What post-hoc correction adds at β={b:g}: per seed, the variant (the default reading, logit adjustment "
                f"τ ∈ {{{', '.join(f'{t:g}' for t in LA_TAUS)}}} or τ-normalisation τ ∈ "
                f"{{{', '.join(f'{t:g}' for t in TAU_NORMS)}}}, the latter not for cosine classifiers) with the best "
                f"**validation** top-1 ({cfg.data.val_per_class if cfg else '?'} images per class, carved outside the "
                "LT subset), scored on test; *gain* is over the same run's "
                "default reading, *Δ CE* against CE corrected the same way, seed by seed. *best on test*: the variant "
                "with the best mean test top-1, for reference only (chosen on test, never a result).",
                "",
                *md_table(
                    ["Method", "val-chosen top-1", "gain", "Δ CE", "beats CE", "chosen per seed", "best on test (ref.)"],
                    body,
                    ["left", "right", "right", "right", "right", "left", "left"],
                ),
            ]
        names = list(READING_COLUMNS) + sorted({k for x in done for k in (x.get("posthoc") or {})}, key=_variant_order)
        body = []
        groups = []
        for m in rows:
            res = list(per.get(m, {}).values())
            if not res:
                continue
            body.append(
                [
                    METHOD_LABELS.get(m, m),
                    *(
                        mean_of(
                            res,
                            lambda x, k=k: (
                                (x.get("by_inference") or {}).get(k) if k in READING_COLUMNS else (x.get("posthoc") or {}).get(k)
                            ),
                        )
                        for k in names
                    ),
                ]
            )
            groups.append(
                [
                    METHOD_LABELS.get(m, m),
                    *(mean_of(res, lambda x, k=k: x.get(k)) for k in ("many", "medium", "few", "worst_class")),
                    str(len(res)),
                ]
            )
        if body:
            out += [
                "",
                f"Every test-time reading and post-hoc variant at β={b:g}, test top-1 mean over seeds (the first "
                "table uses each method's default reading, `max` for two-head rows, Sec. 2.2; `sum` adds a class's cluster "
                "probabilities, `fuse` averages `sum` with the FBH, `fbh` is the FBH alone; post-hoc variants "
                "correct the default reading):",
                "",
                *md_table(["Method", *names], body, ["left"] + ["right"] * len(names)),
                "",
                f"Recall by class group at β={b:g} (many > 100, medium 20–100, few < 20 training images; — where a "
                "group has no class; worst: the lowest per-class recall), mean over seeds:",
                "",
                *md_table(["Method", "many", "medium", "few", "worst", "seeds"], groups, ["left"] + ["right"] * 5),
            ]
        out.append("")
    if fig:
        out += [
            f"Fig. 3 (CE vs two-head at β={fig_imbalance(specs):g}: per-class recall and classifier weight norms, means over "
            f"seeds): [{fig}]({fig})",
            "",
        ]
    return out


def _variant_order(name: str) -> tuple[int, float]:
    """la_tau* before taunorm*, each by its tau."""
    for i, prefix in enumerate(("la_tau", "taunorm")):
        if name.startswith(prefix):
            try:
                return i, float(name.removeprefix(prefix))
            except ValueError:
                break
    return 2, 0.0
