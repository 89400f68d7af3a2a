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
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

__all__ = [
    "DatasetError",
    "Located",
    "S3Settings",
    "StorageError",
    "check_reachable",
    "delete",
    "exists",
    "is_object_store",
    "join",
    "list_dir",
    "list_files",
    "move",
    "ray_storage",
    "read_bytes",
    "read_json",
    "remove_stale_staging",
    "resolve",
    "sha256",
    "upload_dir",
    "write_bytes",
    "write_json",
]

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


def is_object_store(url: str) -> bool:
    """An object store URL (``s3://``, ``gs://``): no local folder behind it, objects published whole."""
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
        where = f" (endpoint {_endpoint()})" if _endpoint() and is_object_store(url) else ""
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
    fs, path = resolve(url, attempts=min(QUICK_ATTEMPTS, _attempts()) if is_object_store(url) else None)
    if not is_object_store(url):
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
        if is_object_store(url):
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
