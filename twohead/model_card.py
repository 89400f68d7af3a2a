"""The model card written next to every checkpoint: ``model_card.json`` and ``model_card.md``.

A checkpoint found later (a run folder, a Ray Train / Tune ``checkpoint_00000N/`` in object storage) says on its
own what it is: the method and backbone, the paper's parameters of the class-division head (u of Eq. 3, alpha of
the soft labels, lambda of L = L2 + lambda L1, the clustering; Sec. 2.2), the data it was trained on (dataset,
imbalance, class counts, a fingerprint of the training split, the prepared dataset's manifest hash), its metrics
at that epoch, where it was trained (torch, device, twohead version and commit) and the line that loads it.

Written from the checkpoint's own state (what :func:`twohead.loop.fit` saves), so the card and the weights never
disagree; the Markdown table goes through ``tabulate``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from . import atomic

__all__ = ["CARD_JSON", "CARD_MD", "build_card", "code_version", "git_commit", "split_fingerprint", "write_card"]

CARD_JSON = "model_card.json"
CARD_MD = "model_card.md"


def git_commit(repo: Path | None = None) -> str:
    """``$TWOHEAD_COMMIT``, else ``git rev-parse HEAD`` of the checkout holding this package (``+dirty`` with
    uncommitted changes to tracked files), else ``unknown`` (a copy of the tree without ``.git``, a wheel)."""
    env = os.environ.get("TWOHEAD_COMMIT")
    if env:
        return env
    repo = repo or Path(__file__).resolve().parents[1]
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        if sha.returncode != 0:
            return "unknown"
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=repo, capture_output=True, timeout=10).returncode != 0
        return sha.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.cache
def code_version() -> dict[str, Any]:
    """twohead's version and commit (:func:`git_commit`; None when unknown), cached for the process."""
    commit = git_commit()
    # The package is imported before any of its modules runs: its version, without importing it again.
    return {"twohead": sys.modules[__package__].__version__, "commit": None if commit == "unknown" else commit}


def split_fingerprint(labels, ids=None) -> str | None:
    """sha256 over a split's labels (and image ids): two runs trained on the same long-tailed split agree."""
    if labels is None:
        return None
    h = hashlib.sha256(np.ascontiguousarray(np.asarray(labels, dtype=np.int64)).tobytes())
    if ids is not None:
        h.update(np.ascontiguousarray(np.asarray(ids).astype(np.int64, copy=False)).tobytes())
    return h.hexdigest()


def _last_with(history: list[dict], key: str) -> dict | None:
    return next((h for h in reversed(history) if key in h), None)


def build_card(state: dict, *, load_path: str, data_source: dict | None = None) -> dict[str, Any]:
    """The card of one checkpoint ``state``; ``load_path`` is what ``twohead.load`` is given to load it."""
    cfg = state.get("config") or {}
    method, model, data, optim = (cfg.get(k) or {} for k in ("method", "model", "data", "optim"))
    history = list(state.get("history") or [])
    counts = [int(c) for c in state.get("class_counts") or []]
    epoch, epochs = int(state.get("epoch", 0)), int(optim.get("epochs", 0))
    val = _last_with(history, "val_top1")
    test = _last_with(history, "test_many")  # the final epoch's test pass (all groups), once the run has finished
    groups = ("top1", "many", "medium", "few", "worst_class")
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "epochs": epochs,
        "finished": epoch >= epochs > 0,
        "train_loss": history[-1].get("train_loss") if history else None,
        "val": {k: val.get(f"val_{k}") for k in groups} | {"epoch": val["epoch"]} if val else None,
        "test": {k: test.get(f"test_{k}") for k in groups} if test else None,
    }
    return {
        "format": "twohead-model-card/1",
        "method": method.get("name"),
        "backbone": model.get("backbone"),
        "inference": model.get("inference"),
        # Sec. 2.2: u clusters for the largest class (Eq. 3), soft labels alpha / (1 - alpha) / (u_c - 1), L = L2 + lambda L1.
        "paper_parameters": {
            "u": method.get("u"),
            "alpha": method.get("alpha"),
            "lambda": method.get("lam"),
            "clustering": method.get("clustering"),
            "rounding": method.get("rounding"),
            "clusters_per_class": list(state.get("clusters_per_class") or []),
            "K": int(sum(state.get("clusters_per_class") or [])),
        },
        "data": {
            "dataset": data.get("dataset"),
            "imbalance": data.get("imbalance"),
            "num_classes": len(counts),
            "train_images": int(sum(counts)),
            "n_max": max(counts) if counts else None,
            "n_min": min(counts) if counts else None,
            "image_size": state.get("image_size"),
            "train_fingerprint": state.get("train_fingerprint"),
            **(data_source or {}),
        },
        "training": {"epochs": epochs, "batch_size": optim.get("batch_size"), "lr": optim.get("lr"), "seed": optim.get("seed")},
        "metrics": metrics,
        "environment": dict(state.get("environment") or {}),
        "load": {
            "python": f"import twohead; clf = twohead.load({load_path!r}); clf.predict('photos/')",
            "cli": f"twohead predict {load_path} photos/",
            **({} if Path(load_path).is_absolute() else {"note": "the path is relative to this checkpoint folder"}),
        },
    }


def _markdown(card: dict) -> str:
    from tabulate import tabulate

    p, d, m, env = card["paper_parameters"], card["data"], card["metrics"], card["environment"]
    state = "finished" if m["finished"] else f"epoch {m['epoch']} of {m['epochs']} (not finished)"
    rows = [
        ("method", card["method"]),
        ("backbone", card["backbone"]),
        ("K-to-C reading", card["inference"]),
        ("u (Eq. 3) / K", f"{p['u']} / {p['K']}"),
        ("alpha, lambda", f"{p['alpha']}, {p['lambda']}"),
        ("clustering", f"{p['clustering']} ({p['rounding']})"),
        ("dataset", f"{d['dataset']}, imbalance {d['imbalance']:g}" if d.get("imbalance") is not None else d["dataset"]),
        ("train images", f"{d['train_images']} in {d['num_classes']} classes (n_max {d['n_max']}, n_min {d['n_min']})"),
        ("train split sha256", d.get("train_fingerprint")),
        ("prepared dataset", d.get("data_uri")),
        ("manifest sha256", d.get("manifest_sha256")),
        ("state", state),
        ("torch / device", f"{env.get('torch')} / {env.get('gpu') or env.get('device')}"),
        ("twohead / commit", f"{env.get('twohead')} / {env.get('commit')}"),
    ]
    rows = [(k, v) for k, v in rows if v is not None]
    out = [
        f"# Model card: {card['method']} / {card['backbone']} on {d['dataset']}",
        "",
        tabulate(rows, headers=["", ""], tablefmt="github"),
        "",
    ]
    scored = [(split, m[split]) for split in ("val", "test") if m.get(split)]
    if scored:
        keys = ("top1", "many", "medium", "few", "worst_class")
        table = [[split, *(s.get(k) for k in keys)] for split, s in scored]
        out += ["## Metrics (%)", "", tabulate(table, headers=["split", *keys], tablefmt="github", floatfmt=".2f"), ""]
    note = [card["load"]["note"] + ".", ""] if card["load"].get("note") else []
    out += ["## Load", "", *note, "```python", card["load"]["python"], "```", "", "```bash", card["load"]["cli"], "```", ""]
    return "\n".join(out)


def write_card(folder: str | Path, state: dict, *, load_path: str, data_source: dict | None = None) -> dict:
    """Write ``model_card.json`` and ``model_card.md`` into ``folder`` (atomically); returns the card."""
    folder = Path(folder)
    card = build_card(state, load_path=load_path, data_source=data_source)
    atomic.write_text(folder / CARD_JSON, json.dumps(card, indent=1, default=str) + "\n")
    atomic.write_text(folder / CARD_MD, _markdown(card))
    return card
