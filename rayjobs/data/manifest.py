"""A prepared dataset on object storage: its manifest, the shards it lists, and the checks readers make.

A prepared dataset lives at ``<url>/<dataset>/``::

    manifest.json                      # written last: class counts, names, shards with sha256
    train/part-00000.parquet ...       # columns image (encoded bytes), label (int32), id (int64)
    val/part-00000.parquet ...
    test/part-00000.parquet ...
    labels/<method>-u<u>-r<rounding>-s<seed>.parquet   # cluster ids (rayjobs.labels)

The manifest is written last (``rayjobs.prepare``), through :mod:`rayjobs.data.storage`'s atomic writes, so a
reader that finds it finds every shard it lists; :func:`verify_dataset` checks sizes and sha256 sums.
"""

from __future__ import annotations

import os
import posixpath
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.fs as pafs

from rayjobs.data.storage import DatasetError, _errors, exists, is_object_store, join, list_files, read_json, resolve, sha256

__all__ = [
    "DATASET_FOLDERS",
    "FORMAT",
    "MANIFEST",
    "Manifest",
    "ShardInfo",
    "SplitInfo",
    "dataset_state",
    "foreign_files",
    "read_manifest",
    "verify_dataset",
]

MANIFEST = "manifest.json"
FORMAT = "twohead-shards/1"


@dataclass
class ShardInfo:
    path: str  # relative to the dataset URL, e.g. "train/part-00000.parquet"
    rows: int
    bytes: int
    sha256: str


@dataclass
class SplitInfo:
    num_rows: int
    class_counts: list[int]
    shards: list[ShardInfo] = field(default_factory=list)


@dataclass
class Manifest:
    """What ``rayjobs.prepare`` wrote: the source of truth for class counts and the shard list."""

    dataset: str
    num_classes: int
    class_names: list[str]
    class_counts: list[int]  # train split, per class (drives Eq. 3's cluster counts and the LT metrics)
    image_size: int  # training resolution
    image_format: str  # webp (lossless, small images) | jpeg | source (original file bytes)
    mean: list[float]
    std: list[float]
    data_config: dict[str, Any]  # the twohead DataConfig the dataset was built from
    splits: dict[str, SplitInfo]
    format: str = FORMAT
    created: str = ""
    url: str = ""  # where it was read from (not stored)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("url")
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], url: str = "") -> Manifest:
        try:
            splits = {
                name: SplitInfo(
                    num_rows=int(s["num_rows"]),
                    class_counts=[int(c) for c in s["class_counts"]],
                    shards=[ShardInfo(**sh) for sh in s["shards"]],
                )
                for name, s in d["splits"].items()
            }
            kw = {
                k: d[k]
                for k in (
                    "dataset",
                    "num_classes",
                    "class_names",
                    "class_counts",
                    "image_size",
                    "image_format",
                    "mean",
                    "std",
                    "data_config",
                )
            }
        except (KeyError, TypeError) as e:
            raise DatasetError(f"{join(url, MANIFEST)} is not a twohead manifest: missing or bad field {e}") from e
        if d.get("format") != FORMAT:
            raise DatasetError(f"{join(url, MANIFEST)} has format {d.get('format')!r}; this version reads {FORMAT!r}")
        return cls(**kw, splits=splits, format=d["format"], created=d.get("created", ""), url=url)

    def shard_urls(self, split: str) -> list[str]:
        if split not in self.splits:
            raise DatasetError(f"dataset {self.url} has no {split!r} split; it has {sorted(self.splits)}")
        return [join(self.url, s.path) for s in self.splits[split].shards]


DATASET_FOLDERS = ("train", "val", "test", "labels")  # what rayjobs.prepare and rayjobs.labels write next to the manifest


def dataset_state(url: str) -> str:
    """``"missing"`` (nothing there), ``"complete"`` (a manifest), ``"incomplete"`` (split folders of a prepare
    that stopped before its manifest) or ``"foreign"`` (files no prepare writes, e.g. a run folder's
    ``checkpoint.pt``: not a dataset, and never to be overwritten as one)."""
    if exists(join(url, MANIFEST)):
        return "complete"
    files = [f for f in list_files(url) if not f.startswith("_tmp-")]
    if not files:
        return "missing"
    return "incomplete" if all(f.split("/", 1)[0] in DATASET_FOLDERS for f in files) else "foreign"


def foreign_files(url: str) -> list[str]:
    """The first few files under ``url`` that are not part of a prepared dataset's layout."""
    return [f for f in list_files(url) if f.split("/", 1)[0] not in DATASET_FOLDERS and not f.startswith("_tmp-")][:3]


def read_manifest(url: str) -> Manifest:
    url = str(url).rstrip("/")
    if not is_object_store(url) and os.path.isfile(resolve(url)[1]):
        raise DatasetError(f"no prepared dataset at {url}: it is a file; give the dataset folder rayjobs.prepare printed")
    try:
        d = read_json(join(url, MANIFEST))
    except FileNotFoundError:
        state = dataset_state(url)
        if state == "incomplete":
            hint = "files are there but no manifest: an interrupted prepare; rerun rayjobs.prepare with --overwrite"
        elif state == "foreign":
            hint = (
                f"it holds {', '.join(foreign_files(url))}: not a dataset folder (a run or search folder?); "
                "give the folder rayjobs.prepare printed"
            )
        else:
            hint = "nothing is there; run rayjobs.prepare first"
        raise DatasetError(f"no prepared dataset at {url}: {join(url, MANIFEST)} does not exist ({hint})") from None
    return Manifest.from_json(d, url=url)


def verify_dataset(url: str | Manifest, *, checksums: bool = True, threads: int = 8) -> Manifest:
    """Check that every shard of the manifest exists with its size (and sha256 when ``checksums``).

    Raises :class:`DatasetError` naming the first shard that does not match.
    """
    m = url if isinstance(url, Manifest) else read_manifest(url)
    shards = [s for split in m.splits.values() for s in split.shards]
    fs, root = resolve(m.url)

    def check(s: ShardInfo) -> str | None:
        u = join(m.url, s.path)
        with _errors(u, "stat"):
            info = fs.get_file_info(posixpath.join(root, s.path))
        if info.type == pafs.FileType.NotFound:
            return f"shard {u} listed in the manifest does not exist"
        if info.size != s.bytes:
            return f"shard {u} has {info.size} bytes; the manifest says {s.bytes}"
        if checksums:
            digest, _ = sha256(u)
            if digest != s.sha256:
                return f"shard {u} has sha256 {digest}; the manifest says {s.sha256} (corrupted or replaced)"
        return None

    with ThreadPoolExecutor(max_workers=max(1, min(threads, len(shards)))) as ex:
        for problem in ex.map(check, shards):
            if problem:
                raise DatasetError(f"dataset {m.url} does not match its manifest: {problem}")
    return m
