"""Where a split's pixels come from, how they are decoded, and the on-disk cache of decoded arrays.

Three sources share one interface, ``decode(rows, size, skip_corrupt) -> (uint8 [n, size, size, 3], bad)``:

* :class:`ParquetSource` -- Parquet files with an encoded-bytes ``image`` column (the shared CIFAR files use
  lossless WebP). Only the row groups holding the requested rows are read.
* :class:`FileSource` -- one image file per sample (Tiny-ImageNet, ImageNet, image folders).
* :class:`ArraySource` -- pixels already in memory (torchvision's CIFAR pickles).

Decoding uses torchvision's native decoders (libwebp / libjpeg-turbo / libpng; 2.3x faster than PIL on the
CIFAR WebP rows and pixel-identical on lossless data) and falls back to PIL for anything they reject (CMYK
JPEGs, BMP, ...); only when both fail is an image corrupt. Decoded arrays are cached as ``.npy`` under
``$TWOHEAD_CACHE/decoded`` (default ``~/.cache/twohead/decoded``), keyed by the source files' path, size and
mtime, the row selection and the output size, so a second run with the same selection loads in milliseconds.
Set ``TWOHEAD_CACHE=off`` to disable the cache.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from twohead import atomic
from twohead.data.types import DataError

__all__ = [
    "cache_dir",
    "decode_bytes",
    "fit_size",
    "ParquetSource",
    "FileSource",
    "ArraySource",
]

log = logging.getLogger("twohead.data")

# Bump when the decode pipeline changes pixels (decoder, resize rule): old cache entries then miss.
_DECODER_VERSION = "tv-decode+pil-fallback/resize-short-center-crop/v1"


def cache_dir() -> Path | None:
    """``$TWOHEAD_CACHE/decoded`` (default ``~/.cache/twohead/decoded``); None when ``TWOHEAD_CACHE=off``."""
    base = os.environ.get("TWOHEAD_CACHE", "")
    if base.lower() in ("off", "0", "none", "false"):
        return None
    return Path(base or "~/.cache/twohead").expanduser() / "decoded"


# ------------------------------------------------------------------------------------------------
# Decoding one image
# ------------------------------------------------------------------------------------------------
def decode_bytes(data: bytes):
    """Decode encoded image bytes to a uint8 torch tensor [3, H, W] (RGB); raises ValueError when undecodable."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    if not data:
        raise ValueError("empty image bytes")
    try:
        img = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        if img.ndim == 4:  # animated GIF / WebP: the first frame
            img = img[0]
        if img.dtype != torch.uint8:  # 16-bit PNG
            from torchvision.transforms.v2 import functional as F

            img = F.to_dtype(img, torch.uint8, scale=True)
        return img
    except Exception as tv_err:  # torchvision rejects some valid files (CMYK JPEG, BMP, ...): let PIL try
        from PIL import Image

        try:
            with Image.open(io.BytesIO(data)) as im:
                arr = np.asarray(im.convert("RGB"))
        except Exception as pil_err:
            raise ValueError(f"{type(pil_err).__name__}: {pil_err} (torchvision: {tv_err})") from None
        return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def fit_size(img, size: int):
    """Resize the shorter side to ``size`` (antialiased bilinear) and center-crop to ``size`` x ``size``."""
    from torchvision.transforms.v2 import functional as F

    h, w = img.shape[-2:]
    if (h, w) == (size, size):
        return img
    if min(h, w) != size:
        img = F.resize(img, size, antialias=True)
    return F.center_crop(img, [size, size])


# ------------------------------------------------------------------------------------------------
# Cache
# ------------------------------------------------------------------------------------------------
def _cache_path(tag: str, identity: list, rows: np.ndarray, size: int) -> Path | None:
    d = cache_dir()
    if d is None:
        return None
    h = hashlib.sha256()
    h.update(json.dumps([_DECODER_VERSION, identity, int(size)], sort_keys=True).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in tag)[:60]
    return d / f"{safe}-{len(rows)}x{size}-{h.hexdigest()[:20]}.npy"


def _cache_load(path: Path | None, n: int, size: int) -> np.ndarray | None:
    if path is None or not path.is_file():
        return None
    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:  # truncated / foreign file: decode again and overwrite
        log.warning("ignoring unreadable decode cache %s: %s", path, e)
        return None
    if arr.dtype != np.uint8 or arr.shape != (n, size, size, 3):
        return None
    return arr


def _cache_store(path: Path | None, arr: np.ndarray) -> None:
    if path is None:
        return
    try:
        # Atomic: a concurrent reader never sees a half-written array.
        with atomic.atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, arr, allow_pickle=False)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; the cache holds public pixels
    except OSError as e:
        log.warning("could not write decode cache %s: %s", path, e)


def _file_identity(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


# ------------------------------------------------------------------------------------------------
# Sources
# ------------------------------------------------------------------------------------------------
class _Source:
    """Shared decode loop: fills a preallocated array, records (or raises on) undecodable rows, caches."""

    tag = "images"

    def _identity(self, rows: np.ndarray) -> list:
        raise NotImplementedError

    def _iter_bytes(self, rows: np.ndarray):
        """Yield (position in rows, encoded bytes) in any order."""
        raise NotImplementedError

    def where(self, row: int) -> str:
        """Human-readable location of source row ``row`` (file and row) for error messages."""
        raise NotImplementedError

    def decode(
        self, rows: Sequence[int] | np.ndarray, size: int, skip_corrupt: bool = False, cache: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Decode source rows to uint8 [n, size, size, 3]; returns (images, bad) where ``bad`` holds the
        positions (into ``rows``) of undecodable images that were skipped (their slots are dropped)."""
        rows = np.asarray(rows, dtype=np.int64)
        path = _cache_path(self.tag, self._identity(rows), rows, size) if cache else None
        hit = _cache_load(path, len(rows), size)
        if hit is not None:
            log.info("loaded %d decoded %s images from cache %s", len(rows), self.tag, path)
            return hit, np.zeros(0, dtype=np.int64)
        t0 = time.perf_counter()
        out = np.empty((len(rows), size, size, 3), dtype=np.uint8)
        bad = []
        from tqdm.auto import tqdm

        with tqdm(total=len(rows), desc=f"decode {self.tag}", unit="img", leave=False, disable=len(rows) < 5000 or None) as bar:
            for pos, data in self._iter_bytes(rows):
                try:
                    img = decode_bytes(data) if data is not None else None
                    if img is None:
                        raise ValueError("missing image bytes")
                except ValueError as e:
                    if not skip_corrupt:
                        raise DataError(
                            f"cannot decode the image at {self.where(int(rows[pos]))}: {e}; fix or remove it, "
                            f"or set data.skip_corrupt=true to skip undecodable images"
                        ) from None
                    bad.append(pos)
                else:
                    out[pos] = fit_size(img, size).permute(1, 2, 0).numpy()
                bar.update(1)
        bad_arr = np.asarray(sorted(bad), dtype=np.int64)
        log.info("decoded %d %s images in %.2fs", len(rows), self.tag, time.perf_counter() - t0)
        if len(bad_arr):
            # Never cache a selection with holes: the next run should see (and report) the same corruption.
            return np.delete(out, bad_arr, axis=0), bad_arr
        _cache_store(path, out)
        return out, bad_arr


class ParquetSource(_Source):
    """Rows of one or more Parquet files (concatenated in the given order) with an encoded ``image`` column."""

    def __init__(self, files: Sequence[str | Path], tag: str = "parquet", image_column: str = "image"):
        import pyarrow.parquet as pq

        self.files = [Path(f) for f in files]
        self.tag = tag
        self.image_column = image_column
        self._pf = []
        for f in self.files:
            try:
                self._pf.append(pq.ParquetFile(f))
            except Exception as e:
                raise DataError(f"cannot read Parquet file {f}: {e}") from None
        for f, pf in zip(self.files, self._pf):
            if image_column not in pf.schema_arrow.names:
                raise DataError(f"Parquet file {f} has no {image_column!r} column (columns: {pf.schema_arrow.names})")
        self.offsets = np.cumsum([0] + [pf.metadata.num_rows for pf in self._pf])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def schema_metadata(self) -> dict[str, str]:
        md = (self._pf[0].schema_arrow.metadata or {}) if self._pf else {}
        return {k.decode(): v.decode() for k, v in md.items()}

    def column_names(self) -> list[str]:
        return list(self._pf[0].schema_arrow.names) if self._pf else []

    def read_column(self, name: str) -> np.ndarray | list:
        """One column across all files, as numpy (integer / float columns) or a list (strings, ...)."""
        import pyarrow as pa

        parts: list = []
        numeric = True
        for k, (f, pf) in enumerate(zip(self.files, self._pf)):
            if name not in pf.schema_arrow.names:
                raise DataError(f"Parquet file {f} has no {name!r} column (columns: {pf.schema_arrow.names})")
            col = pf.read(columns=[name]).column(name)
            if col.null_count:
                i = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
                raise DataError(f"column {name!r} is null at {self.where(int(self.offsets[k]) + i)}")
            numeric = numeric and (pa.types.is_integer(col.type) or pa.types.is_floating(col.type))
            parts.append(col)
        if numeric:
            arrays = [c.to_numpy() for c in parts]
            return np.concatenate(arrays) if arrays else np.zeros(0, dtype=np.int64)
        return [v for c in parts for v in c.to_pylist()]

    def where(self, row: int) -> str:
        k = int(np.searchsorted(self.offsets, row, side="right") - 1)
        return f"row {row - int(self.offsets[k])} of {self.files[k]}"

    def _identity(self, rows: np.ndarray) -> list:
        return [_file_identity(f) for f in self.files]

    def _iter_bytes(self, rows: np.ndarray):
        import pyarrow as pa

        file_of = np.searchsorted(self.offsets, rows, side="right") - 1
        for k, pf in enumerate(self._pf):
            sel = np.flatnonzero(file_of == k)
            if len(sel) == 0:
                continue
            local = rows[sel] - self.offsets[k]
            # Read only the row groups that hold requested rows (a 15% smoke subset still touches most groups of
            # a shuffled selection, but a per-class or head-only selection reads a fraction of the file).
            md = pf.metadata
            starts = np.cumsum([0] + [md.row_group(g).num_rows for g in range(md.num_row_groups)])
            groups = np.unique(np.searchsorted(starts, local, side="right") - 1)
            table = pf.read_row_groups(groups.tolist(), columns=[self.image_column])
            # Position of each requested row inside the concatenation of the groups read.
            group_base = np.cumsum([0] + [md.row_group(int(g)).num_rows for g in groups])
            gi = np.searchsorted(groups, np.searchsorted(starts, local, side="right") - 1)
            pos_in_table = group_base[gi] + (local - starts[groups[gi]])
            col = table.column(self.image_column).take(pa.array(pos_in_table))
            yield from zip(sel.tolist(), col.to_pylist())


class FileSource(_Source):
    """One image file per row."""

    def __init__(self, paths: Sequence[str], tag: str = "files"):
        self.paths = list(paths)
        self.tag = tag

    def __len__(self) -> int:
        return len(self.paths)

    def where(self, row: int) -> str:
        return f"row {row} ({self.paths[row]})"

    def _identity(self, rows: np.ndarray) -> list:
        ident = []
        for r in rows.tolist():
            try:
                ident.append(_file_identity(Path(self.paths[r]))[1:])
            except FileNotFoundError:
                raise DataError(f"image file {self.paths[r]} (row {r}) does not exist") from None
        return [[self.paths[r] for r in rows.tolist()], ident]

    def _iter_bytes(self, rows: np.ndarray):
        for p, r in enumerate(rows.tolist()):
            try:
                data = Path(self.paths[r]).read_bytes()
            except FileNotFoundError:
                raise DataError(f"image file {self.paths[r]} (row {r}) does not exist") from None
            yield p, data


class ArraySource(_Source):
    """Pixels already decoded (torchvision's CIFAR arrays); ``decode`` only selects and resizes."""

    def __init__(self, images: np.ndarray, tag: str = "array"):
        self.images = images
        self.tag = tag

    def __len__(self) -> int:
        return len(self.images)

    def where(self, row: int) -> str:
        return f"row {row} of the {self.tag} array"

    def decode(self, rows, size: int, skip_corrupt: bool = False, cache: bool = True):
        import torch

        rows = np.asarray(rows, dtype=np.int64)
        sel = self.images[rows]
        if sel.shape[1:3] != (size, size):
            sel = (
                np.stack([fit_size(torch.from_numpy(x).permute(2, 0, 1), size).permute(1, 2, 0).numpy() for x in sel])
                if len(sel)
                else np.zeros((0, size, size, 3), np.uint8)
            )
        return np.ascontiguousarray(sel, dtype=np.uint8), np.zeros(0, dtype=np.int64)
