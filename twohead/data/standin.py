"""A generated ImageNet-LT stand-in with the real long-tailed class counts and list-file layout.

ImageNet itself cannot be downloaded here, but every code path that reads ImageNet-LT (list files
``ImageNet_LT_{train,val,test}.txt`` of ``path label`` lines over an image root, 1000 classes, the
real per-class train counts: 115,846 images from 1,280 down to 5 per class) can run on a stand-in
that has the same structure:

- train: the real counts from ``<data_root>/imagenet_lt/train_class_counts.json``;
- val: 20 per class at the paths of the real ``ImageNet_LT_val.txt`` (images from ImageNet train);
- test: 50 per class at the paths of the real ``ImageNet_LT_test.txt`` (images from ImageNet val),
  optionally capped per class for speed;
- images: small JPEGs whose content is learnable from the class: a class colour, an oriented
  stripe texture with a class frequency and orientation, a random phase and pixel noise per image.

Generation is vectorised per class (numpy) and spread over processes; it is written to a temp
folder and renamed into place, so a cache folder is either complete or absent.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import uuid
from collections import defaultdict
from multiprocessing import get_context
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from twohead.data.types import DataError

if TYPE_CHECKING:
    from twohead.config import DataConfig
    from twohead.data.plan import DatasetPlan
    from twohead.data.types import LTData

__all__ = ["generate_standin", "load_standin", "plan_standin", "render_class", "standin_dir"]

_MARKER = "standin.json"
_VERSION = 1


def _read_lists(data_root: Path) -> tuple[list[int], list[str], dict[str, list[tuple[str, int]]]]:
    lt = data_root / "imagenet_lt"
    counts_file = lt / "train_class_counts.json"
    if not counts_file.is_file():
        raise DataError(f"ImageNet-LT class counts not found: {counts_file} (set data.root / TWOHEAD_DATA)")
    meta = json.loads(counts_file.read_text())
    counts, wnids = [int(c) for c in meta["counts"]], list(meta["wnids"])
    if len(counts) != len(wnids):
        raise DataError(f"{counts_file}: {len(counts)} counts but {len(wnids)} wnids")
    lists: dict[str, list[tuple[str, int]]] = {}
    for split in ("val", "test"):
        f = lt / f"ImageNet_LT_{split}.txt"
        if not f.is_file():
            raise DataError(f"ImageNet-LT list not found: {f}")
        rows = []
        for n, line in enumerate(f.read_text().splitlines(), 1):
            if not line.strip():
                continue
            path, label = line.rsplit(maxsplit=1)
            if not 0 <= int(label) < len(counts):
                raise DataError(f"{f}:{n}: label {label} outside [0, {len(counts)})")
            rows.append((path, int(label)))
        lists[split] = rows
    return counts, wnids, lists


def _class_style(c: int, seed: int) -> tuple[np.ndarray, float, float, np.ndarray]:
    """Colour, stripe frequency, orientation and texture colour of class ``c`` (deterministic)."""
    r = np.random.default_rng([seed, c, 7])
    base = r.uniform(40, 215, size=3)
    freq = r.uniform(0.5, 4.0)  # stripes per image width
    theta = r.uniform(0, np.pi)
    tex = r.uniform(-60, 60, size=3)
    return base, freq, theta, tex


def render_class(c: int, n: int, size: int, seed: int, salt: int) -> np.ndarray:
    """``n`` images [n, size, size, 3] uint8 of class ``c``: the class pattern + per-image phase/noise."""
    base, freq, theta, tex = _class_style(c, seed)
    r = np.random.default_rng([seed, c, salt])
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    proj = (2 * np.pi * freq) * (xx * np.cos(theta) + yy * np.sin(theta))  # [s, s]
    phase = r.uniform(0, 2 * np.pi, size=(n, 1, 1)).astype(np.float32)
    wave = np.sin(proj[None] + phase)  # [n, s, s]
    img = wave[..., None] * tex.astype(np.float32)
    img += base.astype(np.float32)
    # Uniform integer noise (+-30): Gaussian float noise made rendering slower than JPEG encoding.
    img += r.integers(-30, 31, size=img.shape, dtype=np.int8)
    return np.clip(img, 0, 255, out=img).astype(np.uint8)


def _write_class(job: tuple[int, list[str], int, int, int, str]) -> int:
    from PIL import Image

    c, paths, size, seed, salt, root = job
    imgs = render_class(c, len(paths), size, seed, salt)
    made_dirs: set[str] = set()
    for img, rel in zip(imgs, paths):
        p = os.path.join(root, rel)
        d = os.path.dirname(p)
        if d not in made_dirs:
            os.makedirs(d, exist_ok=True)
            made_dirs.add(d)
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=90)
        with open(p, "wb") as f:
            f.write(buf.getvalue())
    return len(paths)


def generate_standin(
    out_dir: str | Path,
    image_size: int = 32,
    seed: int = 0,
    *,
    data_root: str | Path | None = None,
    test_per_class: int = 50,
    processes: int | None = None,
) -> Path:
    """Write the stand-in to ``out_dir`` and return it; ``out_dir`` is then both a data root and an image root::

        out_dir/imagenet_lt/ImageNet_LT_{train,val,test}.txt   # ``path label`` lines, the real layout
        out_dir/train/<wnid>/<wnid>_<n>.JPEG                   # train + val images
        out_dir/val/<wnid>/ILSVRC2012_val_<n>.JPEG             # test images
        out_dir/standin.json                                   # parameters; written last

    If ``out_dir`` already holds a stand-in made with the same parameters it is returned as is; a
    folder holding anything else is never touched (:class:`~twohead.data.DataError`).
    """
    from twohead.config import data_root as _data_root

    out_dir = Path(out_dir).expanduser()
    params = {"version": _VERSION, "image_size": int(image_size), "seed": int(seed), "test_per_class": int(test_per_class)}
    if not 8 <= image_size <= 512:
        raise DataError(f"stand-in image_size={image_size} must be in [8, 512]")
    if not 1 <= test_per_class <= 50:
        raise DataError(f"stand-in test_per_class={test_per_class} must be in [1, 50]")
    if out_dir.exists():
        marker = out_dir / _MARKER
        if marker.is_file() and json.loads(marker.read_text()).get("params") == params:
            return out_dir
        raise DataError(f"{out_dir} exists but is not a stand-in made with {params}; choose another folder or remove it")
    counts, wnids, lists = _read_lists(Path(data_root) if data_root else _data_root())

    # Paths per class and split. Train names follow ImageNet's <wnid>_<n>.JPEG and skip the names the
    # val list uses (in the real data val images are carved out of the ImageNet train folder too).
    taken = {p for p, _ in lists["val"]}
    per_class: dict[str, dict[int, list[str]]] = {s: defaultdict(list) for s in ("train", "val", "test")}
    for c, (n, wnid) in enumerate(zip(counts, wnids)):
        k = 0
        while len(per_class["train"][c]) < n:
            k += 1
            p = f"train/{wnid}/{wnid}_{k}.JPEG"
            if p not in taken:
                per_class["train"][c].append(p)
    for p, c in lists["val"]:
        per_class["val"][c].append(p)
    for p, c in lists["test"]:
        if len(per_class["test"][c]) < test_per_class:
            per_class["test"][c].append(p)

    tmp = out_dir.parent / f"_tmp-{uuid.uuid4().hex[:12]}-{out_dir.name}"
    tmp.mkdir(parents=True)
    try:
        salts = {"train": 1, "val": 2, "test": 3}
        jobs = [
            (c, paths, image_size, seed, salts[split] * 100_003 + c, str(tmp))
            for split in ("train", "val", "test")
            for c, paths in sorted(per_class[split].items())
        ]
        jobs.sort(key=lambda j: -len(j[1]))  # big classes first: better load balance
        # Twice the cores: creating many small files blocks in the kernel as much as it computes.
        procs = processes or min(2 * len(os.sched_getaffinity(0)), 32)
        if procs > 1:
            # fork (like torch's DataLoader workers): children only render, encode and write files. forkserver
            # and spawn would re-import a caller's __main__ script.
            with get_context("fork").Pool(procs) as pool:
                total = sum(pool.imap_unordered(_write_class, jobs, chunksize=8))
        else:
            total = sum(map(_write_class, jobs))
        for split in ("train", "val", "test"):
            lines = [f"{p} {c}" for c in sorted(per_class[split]) for p in per_class[split][c]]
            if split != "train":  # keep the real lists' order (only capped)
                keep = {p for c in per_class[split] for p in per_class[split][c]}
                lines = [f"{p} {c}" for p, c in lists[split] if p in keep]
            (tmp / "imagenet_lt").mkdir(exist_ok=True)
            (tmp / "imagenet_lt" / f"ImageNet_LT_{split}.txt").write_text("\n".join(lines) + "\n")
        (tmp / _MARKER).write_text(json.dumps({"params": params, "images": total, "num_classes": len(counts)}) + "\n")
        try:
            tmp.rename(out_dir)
        except OSError:
            # Another process finished the same stand-in first (e.g. two Ray workers on one node).
            if (out_dir / _MARKER).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return generate_standin(out_dir, image_size, seed, data_root=data_root, test_per_class=test_per_class)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def standin_dir(cfg: DataConfig) -> Path:
    """Cache folder of the stand-in for ``cfg``: ``data.path`` if set, else under ``$TWOHEAD_CACHE``."""
    if cfg.path:
        return Path(cfg.path).expanduser()
    cache = Path(os.environ.get("TWOHEAD_CACHE", "~/.cache/twohead")).expanduser()
    size = cfg.image_size or 32
    return cache / f"imagenet-lt-standin-{size}px-s0-v{_VERSION}"


def plan_standin(cfg: DataConfig, root: str | Path) -> DatasetPlan:
    """Generate the stand-in once (cached, see :func:`standin_dir`), then plan it with the ImageNet-LT reader."""
    import dataclasses

    from twohead.data.imagenet_lt import plan_imagenet_lt

    size = cfg.image_size or 32
    folder = standin_dir(cfg)
    marker = folder / _MARKER
    # Reuse any complete stand-in of this image size (e.g. one generated with fewer test images per class).
    if not (marker.is_file() and json.loads(marker.read_text())["params"].get("image_size") == size):
        folder = generate_standin(folder, size, 0, data_root=root)
    # The stand-in folder is the data root (imagenet_lt/ lists) and the image root (data.path) at once.
    plan = plan_imagenet_lt(cfg.model_copy(update={"path": str(folder), "image_size": size}), folder)
    return dataclasses.replace(plan, name="imagenet-lt-standin")


def load_standin(cfg: DataConfig, root: str | Path) -> LTData:
    """The ImageNet-LT stand-in as :class:`~twohead.data.LTData` (file-backed, like ImageNet-LT)."""
    plan = plan_standin(cfg, root).with_fractions(cfg.train_fraction, cfg.eval_fraction, cfg.lt_seed)
    return plan.materialize(skip_corrupt=cfg.skip_corrupt)
