"""Object storage for shards, labels and run results: one URL -> (pyarrow filesystem, path) resolver.

Every URL the Ray jobs take (``file:///data``, a plain local path, ``s3://bucket/prefix``,
``gs://bucket/prefix``) goes through :func:`resolve`, so prepare, the streaming reader, Ray Train's
``storage_path`` and the results upload all talk to the same endpoint with the same retry policy.

S3 settings come from the standard AWS environment (``AWS_ENDPOINT_URL[_S3]``, ``AWS_REGION`` /
``AWS_DEFAULT_REGION``, credentials chain) plus two knobs of this toolkit:

- ``TWOHEAD_S3_RETRIES`` (default 10): attempts per request before an error surfaces (AWS "standard" retry
  mode: exponential backoff with jitter, each wait capped at 20 s), so a request rides out an outage of about a
  minute or more. This covers the filesystems :func:`resolve` builds in the process that uses them, the ones the
  stream's tasks build from :class:`Located` on other nodes, and Ray Train's and Tune's own checkpoint and
  snapshot writes (:func:`ray_storage`: s3fs, whose settings survive pickling). The check made before anything is
  written (:func:`check_reachable`) tries twice, so a wrong endpoint is reported in seconds;
- ``TWOHEAD_S3_CONNECT_TIMEOUT`` (seconds, default the AWS SDK's).

Writes are atomic at the destination: local files are written under a ``_tmp-<uuid>`` name and
renamed; object stores publish an object only when its upload completes (single PUT or completed
multipart upload), and multi-file artefacts publish a marker file (a dataset's ``manifest.json``, a
run's ``metrics.json``) last, so readers never see a half-written artefact as complete.

A prepared dataset lives at ``<url>/<dataset>/``::

    manifest.json                      # written last: class counts, names, shards with sha256
    train/part-00000.parquet ...       # columns image (encoded bytes), label (int32), id (int64)
    val/part-00000.parquet ...
    test/part-00000.parquet ...
    labels/<method>-u<u>-r<rounding>-s<seed>.parquet   # cluster ids (rayjobs.labels)

(Over 400 lines on purpose: the dataset layout above is defined by how it is written and read through these
same functions -- atomic writes, the marker written last, listing and checksums -- so the manifest's classes live
beside them.)
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

__all__ = [
    "DatasetError",
    "FORMAT",
    "Located",
    "MANIFEST",
    "Manifest",
    "S3Settings",
    "ShardInfo",
    "SplitInfo",
    "StorageError",
    "check_reachable",
    "dataset_state",
    "foreign_files",
    "delete",
    "exists",
    "join",
    "list_dir",
    "list_files",
    "move",
    "ray_storage",
    "read_bytes",
    "read_json",
    "read_manifest",
    "remove_stale_staging",
    "resolve",
    "sha256",
    "upload_dir",
    "verify_dataset",
    "write_bytes",
    "write_json",
]

MANIFEST = "manifest.json"
FORMAT = "twohead-shards/1"
_OBJECT_STORES = ("s3", "gs", "gcs")


class StorageError(OSError):
    """A storage URL cannot be reached, does not exist, or refuses the operation."""


class DatasetError(ValueError):
    """A prepared dataset is missing, incomplete, or does not match its manifest."""


# --------------------------------------------------------------------------------------------
# URL -> filesystem
# --------------------------------------------------------------------------------------------
def _scheme(url: str) -> str:
    p = urlparse(url)
    # A Windows drive letter or a plain path has no (or a one-letter) scheme.
    return p.scheme.lower() if len(p.scheme) > 1 else ""


def _endpoint() -> str | None:
    return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None


S3_ATTEMPTS = 10  # per request, unless TWOHEAD_S3_RETRIES says otherwise (module docstring)
QUICK_ATTEMPTS = 2  # check_reachable: a wrong endpoint or a store that is down is said before anything starts


def _attempts() -> int:
    raw = os.environ.get("TWOHEAD_S3_RETRIES", "").strip()
    if not raw:
        return S3_ATTEMPTS
    if not raw.isdigit() or int(raw) < 1:
        raise StorageError(f"TWOHEAD_S3_RETRIES={raw!r} must be a whole number >= 1 (attempts per S3 request)")
    return int(raw)


@dataclass(frozen=True)
class S3Settings:
    """What this process's environment says about S3 (module docstring), as plain data that can travel to
    another process: pyarrow drops an ``S3FileSystem``'s retry strategy when it is pickled, so a task on another
    node gets these settings instead and builds its own filesystem from them (:meth:`Located.resolve`)."""

    endpoint: str | None
    region: str | None
    attempts: int
    connect_timeout: float | None

    @classmethod
    def current(cls, bucket: str | None = None) -> S3Settings:
        endpoint = _endpoint()
        region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
        if region is None and not endpoint and bucket:
            with _errors(f"s3://{bucket}", "resolve the region of"):
                region = pafs.resolve_s3_region(bucket)
        timeout = os.environ.get("TWOHEAD_S3_CONNECT_TIMEOUT")
        return cls(endpoint, region, _attempts(), float(timeout) if timeout else None)

    def filesystem(self, attempts: int | None = None) -> pafs.S3FileSystem:
        kw: dict[str, Any] = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=attempts or self.attempts)}
        if self.connect_timeout is not None:
            kw["connect_timeout"] = self.connect_timeout
        if self.endpoint:
            kw["endpoint_override"] = self.endpoint  # "http://host:port" also sets the scheme
        if self.region:
            kw["region"] = self.region
        return pafs.S3FileSystem(**kw)


def _s3_filesystem(bucket: str, attempts: int | None = None) -> pafs.S3FileSystem:
    return S3Settings.current(bucket).filesystem(attempts)


def ray_storage(url: str) -> tuple[pafs.FileSystem, str]:
    """``(storage_filesystem, storage_path)`` for Ray Train's and Tune's ``RunConfig``.

    Ray pickles the filesystem into its controller and every worker, and a pickled pyarrow ``S3FileSystem`` comes
    back without its retry strategy: a checkpoint upload or snapshot write there would get the AWS SDK's few quick
    attempts. So S3 goes through s3fs (fsspec) in pyarrow's ``FSSpecHandler``, the custom-storage route Ray
    documents: an fsspec filesystem is rebuilt from its constructor arguments when unpickled, botocore's standard
    retry mode with ``TWOHEAD_S3_RETRIES`` attempts (exponential backoff, each wait at most 20 s) included.
    Everything else resolves as :func:`resolve` does (the shard reads keep pyarrow's native S3 client, about twice
    as cheap per MB: see README, "Fault tolerance and resume")."""
    url = str(url)
    if _scheme(url) not in ("s3", "s3a"):
        return resolve(url)
    import s3fs

    p = urlparse(url)
    if not p.netloc:
        raise StorageError(f"{url!r} names no bucket; expected s3://BUCKET/PREFIX")
    st = S3Settings.current(p.netloc)
    config: dict[str, Any] = {"retries": {"max_attempts": st.attempts, "mode": "standard"}}
    if st.connect_timeout is not None:
        config["connect_timeout"] = st.connect_timeout
    fs = s3fs.S3FileSystem(
        endpoint_url=st.endpoint,
        client_kwargs={"region_name": st.region} if st.region else {},
        config_kwargs=config,
        # No cached listings and no shared instance: a rerun in the same process must see the snapshot and
        # checkpoints the previous run wrote, and fsspec would otherwise serve both from its caches.
        use_listings_cache=False,
        skip_instance_cache=True,
    )
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), f"{p.netloc}{p.path}".rstrip("/")


@dataclass(frozen=True)
class Located:
    """A URL with the S3 settings of the process that named it: :meth:`resolve` gives the same
    ``(filesystem, path)`` as :func:`resolve` there, retries included, in whichever process it is unpickled."""

    url: str
    s3: S3Settings | None = None

    @classmethod
    def of(cls, url: str) -> Located:
        url = str(url)
        if _scheme(url) in ("s3", "s3a"):
            return cls(url, S3Settings.current(urlparse(url).netloc))
        return cls(url)

    def resolve(self) -> tuple[pafs.FileSystem, str]:
        if self.s3 is None:
            return resolve(self.url)
        p = urlparse(self.url)
        return self.s3.filesystem(), f"{p.netloc}{p.path}".rstrip("/")


def resolve(url: str | os.PathLike[str], *, attempts: int | None = None) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a URL or local path; the path has no scheme or trailing slash.

    ``attempts``: per S3 request (default ``TWOHEAD_S3_RETRIES``, else :data:`S3_ATTEMPTS`)."""
    url = str(url)
    scheme = _scheme(url)
    if scheme == "":
        return pafs.LocalFileSystem(), str(Path(url).expanduser().resolve())
    if scheme == "file":
        return pafs.LocalFileSystem(), str(Path(urlparse(url).path).resolve())
    if scheme in ("s3", "s3a"):
        p = urlparse(url)
        if not p.netloc:
            raise StorageError(f"{url!r} names no bucket; expected s3://BUCKET/PREFIX")
        return _s3_filesystem(p.netloc, attempts), f"{p.netloc}{p.path}".rstrip("/")
    with _errors(url, "open"):
        fs, path = pafs.FileSystem.from_uri(url)
    return fs, path.rstrip("/")


def join(url: str, *parts: str) -> str:
    """Join path parts onto a URL or local path with ``/`` (object-store keys never use ``\\``)."""
    base = str(url).rstrip("/")
    return "/".join([base, *[p.strip("/") for p in parts if p]])


def _is_object_store(url: str) -> bool:
    return _scheme(url) in ("s3", "s3a", "gs", "gcs")


@contextmanager
def _errors(url: str, action: str) -> Iterator[None]:
    """Turn the SDK's OSErrors into one message naming the URL, the endpoint and the likely cause."""
    try:
        yield
    except (StorageError, FileNotFoundError, FileExistsError):
        raise
    except OSError as e:
        msg = str(e)
        where = f" (endpoint {_endpoint()})" if _endpoint() and _is_object_store(url) else ""
        if "NO_SUCH_BUCKET" in msg or "NoSuchBucket" in msg or ("Bucket '" in msg and "not found" in msg):
            bucket = urlparse(url).netloc
            raise StorageError(f"cannot {action} {url}: bucket {bucket!r} does not exist{where}") from e
        if "NETWORK_CONNECTION" in msg or "Could not connect" in msg or "curlCode" in msg:
            raise StorageError(
                f"cannot {action} {url}: the object store{where} is unreachable "
                f"(check AWS_ENDPOINT_URL / network; TWOHEAD_S3_RETRIES sets the retries): {msg}"
            ) from e
        if "ACCESS_DENIED" in msg or "InvalidAccessKeyId" in msg or "SignatureDoesNotMatch" in msg:
            raise StorageError(f"cannot {action} {url}: access denied{where}; check the credentials: {msg}") from e
        raise StorageError(f"cannot {action} {url}{where}: {msg}") from e


def check_reachable(url: str, what: str = "output folder") -> None:
    """Fail fast with a clear error if the store behind the output location ``url`` is unreachable or its bucket
    is missing, or if ``url`` is a local folder that cannot be created or written (``what`` names it)."""
    fs, path = resolve(url, attempts=min(QUICK_ATTEMPTS, _attempts()) if _is_object_store(url) else None)
    if not _is_object_store(url):
        from twohead.folders import OutputFolderError, check_writable

        try:
            check_writable(path, what)
        except OutputFolderError as e:
            raise StorageError(str(e)) from None
        return
    bucket = path.split("/", 1)[0]
    with _errors(url, "reach"):
        info = fs.get_file_info(bucket)
    if info.type == pafs.FileType.NotFound:
        where = f" (endpoint {_endpoint()})" if _endpoint() else ""
        raise StorageError(f"cannot use {url}: bucket {bucket!r} does not exist{where}")


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def exists(url: str) -> bool:
    fs, path = resolve(url)
    with _errors(url, "stat"):
        return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(url: str) -> bytes:
    fs, path = resolve(url)
    with _errors(url, "read"):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{url} does not exist")
        with fs.open_input_stream(path) as f:
            return f.read()


def read_json(url: str) -> Any:
    data = read_bytes(url)
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{url} is not valid JSON: {e}") from e


def _tmp_sibling(path: str) -> str:
    d, name = posixpath.split(path)
    return posixpath.join(d, f"_tmp-{uuid.uuid4().hex[:12]}-{name}")


def write_bytes(url: str, data: bytes, *, overwrite: bool = True) -> None:
    """Write ``data`` to ``url`` atomically (temp name + rename locally, one completed upload remotely)."""
    fs, path = resolve(url)
    with _errors(url, "write"):
        if not overwrite and fs.get_file_info(path).type != pafs.FileType.NotFound:
            raise FileExistsError(f"{url} already exists")
        parent = posixpath.dirname(path)
        if parent:
            fs.create_dir(parent, recursive=True)
        if _is_object_store(url):
            # An object appears only when its upload completes: no temp object needed.
            with fs.open_output_stream(path) as f:
                f.write(data)
            return
        tmp = _tmp_sibling(path)
        try:
            with fs.open_output_stream(tmp) as f:
                f.write(data)
            fs.move(tmp, path)  # rename(2): atomic on one filesystem
        finally:
            if fs.get_file_info(tmp).type != pafs.FileType.NotFound:
                fs.delete_file(tmp)


def write_json(url: str, obj: Any, *, overwrite: bool = True) -> None:
    write_bytes(url, (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode(), overwrite=overwrite)


def move(src_url: str, dst_url: str) -> None:
    """Move one file (rename locally; server-side copy + delete on object stores)."""
    fs, src = resolve(src_url)
    _, dst = resolve(dst_url)
    with _errors(src_url, f"move to {dst_url}"):
        parent = posixpath.dirname(dst)
        if parent:
            fs.create_dir(parent, recursive=True)
        fs.move(src, dst)


def delete(url: str, *, missing_ok: bool = True) -> None:
    """Delete a file or a whole directory (prefix)."""
    fs, path = resolve(url)
    with _errors(url, "delete"):
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            if not missing_ok:
                raise FileNotFoundError(f"{url} does not exist")
            return
        if info.type == pafs.FileType.Directory:
            fs.delete_dir(path)
        else:
            fs.delete_file(path)


def list_files(url: str) -> list[str]:
    """Relative paths (``/``-separated) of every file under ``url``; empty if it does not exist."""
    fs, path = resolve(url)
    with _errors(url, "list"):
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            return []
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    return sorted(posixpath.relpath(i.path, path) for i in infos if i.type == pafs.FileType.File)


def list_dir(url: str) -> list[str]:
    """Names of the files and folders directly under ``url`` (an object store's empty "folders" included);
    empty if it does not exist."""
    fs, path = resolve(url)
    with _errors(url, "list"):
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    return sorted(posixpath.basename(i.path.rstrip("/")) for i in infos)


def sha256(url: str, chunk: int = 8 << 20) -> tuple[str, int]:
    """``(hex sha256, size in bytes)`` of one file, streamed."""
    fs, path = resolve(url)
    h, n = hashlib.sha256(), 0
    with _errors(url, "read"):
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"{url} does not exist")
        with fs.open_input_stream(path) as f:
            while True:
                b = f.read(chunk)
                if not b:
                    break
                h.update(b)
                n += len(b)
    return h.hexdigest(), n


def upload_dir(local_dir: str | Path, url: str, *, last: str = "metrics.json") -> list[str]:
    """Copy every file of ``local_dir`` to ``url``; ``last`` (the completion marker) is published last.

    Files are uploaded under ``url/_tmp-<uuid>/`` and then moved into place, so an interrupted upload
    leaves only the temp prefix (removed by the next upload); a reader that sees ``url/<last>`` sees every other
    file too.
    Returns the relative paths uploaded.
    """
    local_dir = Path(local_dir)
    rel = sorted(p.relative_to(local_dir).as_posix() for p in local_dir.rglob("*") if p.is_file())
    rel.sort(key=lambda r: r == last)  # stable: marker to the end
    fs, dst = resolve(url)
    staging = posixpath.join(dst, f"_tmp-{uuid.uuid4().hex[:12]}")
    with _errors(url, "upload to"):
        fs.create_dir(staging, recursive=True)
        pafs.copy_files(str(local_dir), staging, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
        try:
            for r in rel:
                target = posixpath.join(dst, r)
                if posixpath.dirname(target):
                    fs.create_dir(posixpath.dirname(target), recursive=True)
                fs.move(posixpath.join(staging, r), target)
        finally:
            if fs.get_file_info(staging).type != pafs.FileType.NotFound:
                fs.delete_dir(staging)
    remove_stale_staging(url)  # a results folder has one writer (rank 0 of its run): any other staging is stale
    return rel


def remove_stale_staging(url: str, keep: str | None = None) -> list[str]:
    """Delete the ``_tmp-*`` staging folders directly under ``url`` (an empty one too) but ``keep``: what earlier
    writes left when the store went away mid-write and they could not clean up. Returns the names removed.

    Only for a folder with one writer at a time (a dataset being prepared, a run's results)."""
    stale = sorted(n for n in list_dir(url) if n.startswith("_tmp-") and n != keep)
    for name in stale:
        delete(join(url, name))
    return stale


# --------------------------------------------------------------------------------------------
# Prepared datasets: manifest + shards
# --------------------------------------------------------------------------------------------
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
    if not _is_object_store(url) and os.path.isfile(resolve(url)[1]):
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
