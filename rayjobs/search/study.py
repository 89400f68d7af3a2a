"""The Optuna study of a search and the search record that finds it again (Ray-free).

**The study** lives in an RDB: a SQLite file by default, PostgreSQL on clusters. ``--storage`` takes a URL or
``env:NAME``, the URL read from the environment variable ``NAME``: a password then never appears on a command
line (``ray job list``), in a file the search writes (``search.json``, Tune's ``tuner.pkl`` / searcher state,
the report) or in a log; only ``env:NAME`` is recorded. A literal URL is recorded with its password as ``***``.
When the search keeps everything in object storage (``--storage-path s3://...``) and the study is the default
SQLite file, the file is a working copy in ``--out`` and a consistent snapshot of it (SQLite's backup API) is
published beside the experiment, ``<experiment>/<study>.db``; a rerun from an empty working directory starts
from that snapshot.

**The search record** is ``search_space.yaml`` (the resolved space, in the form ``load_search_space`` reads)
and ``search.json`` (study storage, experiment URL, dataset, labels) in the record folder: the Tune experiment
folder when ``--storage-path`` is given (an object-store URL or a shared folder), else ``--out``. ``--out`` is
always a local mirror of the record and the report. A rerun must be the same search (only resources may change).

(Over 400 lines on purpose: the record exists to find the study again, and the rules for reopening one -- same
space, same objectives, storage named the same way, the SQLite snapshot -- change together.)
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rayjobs.data import storage as store
from twohead import atomic
from twohead.config import flatten

if TYPE_CHECKING:
    import optuna

    from rayjobs.search.space import SearchSpec

__all__ = [
    "META_FILE",
    "SPACE_FILE",
    "SearchError",
    "SearchRecord",
    "StudyStorage",
    "default_storage_url",
    "display_url",
    "load_record",
    "open_storage",
    "open_study",
    "publish_sqlite",
    "save_record",
    "study_storage",
]

SPACE_FILE = "search_space.yaml"
META_FILE = "search.json"
DRIVER_ENV = "TWOHEAD_OPTUNA_STORAGE"  # the driver's own copy of a literal --storage URL (never written anywhere)


class SearchError(RuntimeError):
    """The study storage or the search record cannot be used as asked (one line: what, where, what to do)."""


# ------------------------------------------------------------------------------------------ storage URLs
def default_storage_url(out_dir: str | Path, study_name: str) -> str:
    """Embedded default: a SQLite file in the results folder (``sqlite:////abs/out/<study>.db``)."""
    return f"sqlite:///{(Path(out_dir) / f'{study_name}.db').resolve()}"


def display_url(url: str) -> str:
    """The URL with any password replaced by ``***`` (safe to print and to write into the results folder)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: the error is reported when it is opened
        return url


@dataclass(frozen=True)
class StudyStorage:
    """Where the study is: ``url`` (secret, in memory only), ``ref`` (what may be recorded) and ``env`` (the
    environment variable of this process that holds ``url``, for objects Tune pickles)."""

    url: str
    ref: str  # "env:NAME", a URL with the password as ***, or "default" (SQLite in --out)
    env: str

    @property
    def display(self) -> str:
        return self.ref if self.ref.startswith("env:") else display_url(self.url)

    @property
    def sqlite_path(self) -> Path | None:
        return Path(self.url[len("sqlite:///") :]) if self.url.startswith("sqlite:///") else None


def study_storage(arg: str | None, out_dir: str | Path, study_name: str, *, export: bool = True) -> StudyStorage:
    """Resolve ``--storage`` (``None``: SQLite in ``out_dir``; ``env:NAME``; a URL) and export it to
    :data:`DRIVER_ENV` (or keep ``NAME``) in this process only; ``export=False`` for another search's study
    (a warm start's source), which must not replace this search's."""
    if arg is None or arg == "default":
        url = default_storage_url(out_dir, study_name)
        if export:
            os.environ[DRIVER_ENV] = url
        return StudyStorage(url, "default", DRIVER_ENV)
    if arg.startswith("env:"):
        name = arg[4:]
        if not name or not name.replace("_", "a").isalnum():
            raise SearchError(f"--storage {arg!r}: expected env:NAME with NAME an environment variable name")
        url = os.environ.get(name, "")
        if not url:
            raise SearchError(
                f"--storage {arg}: the environment variable {name} is not set (or empty); export it to the Optuna "
                "storage URL where this command runs (for a Ray job: in the cluster nodes' environment)"
            )
        return StudyStorage(url, arg, name)
    if export:
        os.environ[DRIVER_ENV] = arg
    return StudyStorage(arg, display_url(arg), DRIVER_ENV)


def _rdb_storage(url: str) -> optuna.storages.RDBStorage:
    import optuna

    # A database server (not SQLite): check each pooled connection before use and reconnect if the server dropped
    # it (a restart, a failover, an idle timeout), instead of failing the search on its next call (SQLAlchemy's
    # "pessimistic disconnect handling"; Optuna sets it for MySQL only).
    kwargs = {} if url.startswith("sqlite") else {"engine_kwargs": {"pool_pre_ping": True}}
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, **kwargs)
        except Exception as exc:  # noqa: BLE001
            # Two processes creating the schema of a new database at once (two drivers, a driver and a
            # dashboard, a search and `optuna.load_study` watching it) race on CREATE TABLE ("already exists") and
            # on the version row (an IntegrityError on every database: PostgreSQL's duplicate key, SQLite's
            # "UNIQUE constraint failed"); the schema is there once the winner commits.
            if attempt < 4 and (isinstance(exc, sqlalchemy.exc.IntegrityError) or "already exists" in str(exc)):
                time.sleep(0.5 * (attempt + 1))
                continue
            raise
    raise AssertionError("unreachable")


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """An ``RDBStorage`` for ``url``, or :class:`SearchError` naming it (password hidden) and the cause."""
    shown = display_url(url)
    try:
        return _rdb_storage(url)
    except ModuleNotFoundError as exc:
        raise SearchError(
            f"cannot open Optuna storage {shown}: its database driver {exc.name!r} is not installed "
            "(PostgreSQL: pip install psycopg2-binary)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many types; all mean "cannot open"
        first = (str(exc).strip().splitlines() or [""])[0].replace(url, shown)
        raise SearchError(f"cannot open Optuna storage {shown}: {type(exc).__name__}: {first}".strip()) from None


def open_study(url: str, spec: SearchSpec, *, create: bool = True, storage: Any = None, sampler: Any = None) -> optuna.Study:
    """Load or create the study named ``spec.study_name``; refuse one made for other directions or objectives.

    The check runs before any trial: Optuna's ``load_if_exists`` would otherwise silently reuse a study whose
    direction is the opposite of ``spec.mode`` and mix the two searches. A new study is given its objectives'
    names (``set_metric_names``: optuna-dashboard labels its axes and Pareto front with them).
    """
    import optuna

    storage = storage or open_storage(url)
    want = [o.direction for o in spec.objectives]
    try:
        existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage, include_best_trial=False)}
    except Exception as exc:  # noqa: BLE001
        raise SearchError(f"cannot read studies from {display_url(url)}: {type(exc).__name__}: {exc}") from None
    found = existing.get(spec.study_name)
    if found is not None:
        have = [d.name.lower() for d in found.directions]
        if have != want:
            this = f"mode={spec.mode} ({want[0]})" if len(want) == 1 else f"objectives {spec.metrics} ({'/'.join(want)})"
            raise SearchError(
                f"study {spec.study_name!r} in {display_url(url)} exists with direction {'/'.join(have)}, but this search "
                f"is {this}; use another --study-name or storage"
            )
        metrics = found.user_attrs.get("objectives") or ([found.user_attrs["metric"]] if "metric" in found.user_attrs else None)
        if metrics is not None and list(metrics) != spec.metrics:
            shown = metrics[0] if len(metrics) == 1 else metrics
            mine = spec.metric if not spec.multi else spec.metrics
            raise SearchError(
                f"study {spec.study_name!r} in {display_url(url)} optimises {shown!r}, this search {mine!r}; "
                "use another --study-name or storage"
            )
    elif not create:
        raise SearchError(f"study {spec.study_name!r} not found in {display_url(url)}; it holds {sorted(existing) or 'no study'}")
    study = optuna.create_study(
        storage=storage, study_name=spec.study_name, directions=want, load_if_exists=True, sampler=sampler
    )
    if found is None:
        import warnings

        study.set_user_attr("metric", spec.metric)
        study.set_user_attr("objectives", spec.metrics)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # stable since Optuna 3.2
            study.set_metric_names(spec.metrics)
    return study


# -------------------------------------------------------------------------------- SQLite in object storage
def publish_sqlite(path: Path, url: str) -> None:
    """Publish a consistent copy of the SQLite file ``path`` at ``url`` (backup API: safe while it is written)."""
    fd, tmp = tempfile.mkstemp(prefix=".snapshot-", suffix=".db", dir=path.parent)
    os.close(fd)
    try:
        src, dst = sqlite3.connect(str(path)), sqlite3.connect(tmp)
        try:
            src.backup(dst)
        finally:
            dst.close()
            src.close()
        store.write_bytes(url, Path(tmp).read_bytes())
    finally:
        Path(tmp).unlink(missing_ok=True)


def fetch_sqlite(url: str, path: Path) -> bool:
    """Copy the snapshot at ``url`` to ``path`` when ``path`` does not exist yet; True if it did."""
    if path.exists() or not store.exists(url):
        return False
    atomic.write_bytes(path, store.read_bytes(url))
    return True


# ------------------------------------------------------------------------------------------ search record
@dataclass
class SearchRecord:
    """``search.json`` read back: where everything of one search is."""

    root: str  # record folder: the experiment URL with --storage-path, else --out
    spec: SearchSpec
    meta: dict[str, Any]

    @property
    def experiment(self) -> str:
        return self.meta["experiment"]

    @property
    def sqlite_snapshot(self) -> str | None:
        return self.meta.get("sqlite_snapshot")


def _space_dict(spec: SearchSpec) -> dict[str, Any]:
    """The spec in the YAML form :func:`rayjobs.search.space.load_search_space` reads, base fully resolved."""
    d = spec.to_dict()
    flat = {f"{section}.{k}": v for section, values in d["base"].items() for k, v in values.items()}
    out = {"study_name": d["study_name"], "base": {"set": flat}}
    for key in ("metric", "mode", "objectives", "posthoc", "params", "reference", "search", "resources"):
        if key in d:
            out[key] = d[key]
    return out


def _read_text(root: str, name: str) -> str | None:
    url = store.join(root, name)
    return store.read_bytes(url).decode() if store.exists(url) else None


def _may_change(key: str) -> bool:
    """A flattened search-record key that a resumed search may change: resources and result-neutral base keys."""
    from twohead.config import RESULT_NEUTRAL

    return key.startswith("resources.") or key.removeprefix("base.set.") in RESULT_NEUTRAL


def save_record(
    root: str,
    spec: SearchSpec,
    meta: dict[str, Any],
    *,
    mirror: Path | None = None,
    check_only: bool = False,
    extend: bool = False,
) -> int | None:
    """Record the search at ``root`` (first run) or check that a rerun is the same search (resume); mirror both
    files into ``mirror``. Resources may change between runs (they only affect scheduling), and so may the
    base config's result-neutral keys (where the data lives, whether it may be downloaded, loader workers, device);
    anything else that differs would mix two searches in one study and one Tune experiment, so it is refused with the differences.
    ``extend``: a rerun may raise ``search.num_samples`` (nothing else), which extends the search; the record then
    holds the new count. ``check_only`` checks without writing (run before anything else is touched).

    Returns the ``num_samples`` recorded before this run (None for a new record)."""
    import yaml

    from rayjobs.search.space import parse_search_space

    new = _space_dict(spec)
    before: int | None = None
    places = [root] + ([str(mirror)] if mirror is not None and str(mirror) != root else [])
    for where in places:
        old_text = _read_text(where, SPACE_FILE)
        if old_text is not None:
            old = flatten(_space_dict(parse_search_space(yaml.safe_load(old_text), source=store.join(where, SPACE_FILE))))
            cur = flatten(new)
            diff = [k for k in sorted(set(old) | set(cur)) if not _may_change(k) and old.get(k) != cur.get(k)]
            n_old, n_new = old["search.num_samples"], cur["search.num_samples"]
            if extend and diff == ["search.num_samples"]:
                if n_new < n_old:
                    raise SearchError(
                        f"{where} holds this search with num_samples={n_old}; a rerun may only raise it (extend the "
                        f"search), not lower it to {n_new}: pass --num-samples {n_old} to resume it"
                    )
                diff = []
            if diff:
                detail = "; ".join(f"{k.replace('base.set.', 'base ')}: {old.get(k)!r} -> {cur.get(k)!r}" for k in diff)
                raise SearchError(
                    f"{where} holds a different search ({store.join(where, SPACE_FILE)}); a resumed search must use the "
                    f"same space and options (only resources may change{', and --num-samples grow' if extend else ''}). "
                    f"Differences: {detail}. Use another --out (or --storage-path / --study-name) for a new search."
                )
            before = n_old if before is None else before
        old_meta_text = _read_text(where, META_FILE)
        old_meta = json.loads(old_meta_text) if old_meta_text else {}
        for key, what in (("storage", "--storage"), ("data", "--data")):
            if key in old_meta and old_meta[key] != meta.get(key):
                raise SearchError(
                    f"{where} was searched with {what} {old_meta[key]}, now {meta.get(key)}; pass the same {what} to resume"
                )
        warm = meta.get("warm_start")
        if warm is not None and old_meta.get("warm_start") not in (None, warm):
            raise SearchError(
                f"{where} was warm-started from {old_meta['warm_start']}, now --warm-start {warm}; a warm start only "
                "seeds a new search: rerun without --warm-start to resume it"
            )
    if check_only:
        return before
    space_text = yaml.safe_dump(new, sort_keys=False)
    for where in places:
        if _read_text(where, SPACE_FILE) is None or (before is not None and before != spec.search.num_samples):
            store.write_bytes(store.join(where, SPACE_FILE), space_text.encode())
        old_meta_text = _read_text(where, META_FILE)
        merged = {**(json.loads(old_meta_text) if old_meta_text else {}), **meta, "record": root}
        store.write_json(store.join(where, META_FILE), merged)
    return before


def update_record(root: str, changes: dict[str, Any], *, mirror: Path | None = None) -> None:
    """Merge ``changes`` into ``search.json`` at ``root`` (and the mirror)."""
    for where in [root] + ([str(mirror)] if mirror is not None and str(mirror) != root else []):
        text = _read_text(where, META_FILE)
        store.write_json(store.join(where, META_FILE), {**(json.loads(text) if text else {}), **changes})


def load_record(where: str | Path) -> SearchRecord:
    """The search recorded at ``where``: a local search folder (``--out``) or the record URL it names."""
    import yaml

    from rayjobs.search.space import parse_search_space

    where = str(where)
    try:
        text = _read_text(where, SPACE_FILE)
    except store.StorageError as exc:
        raise SearchError(str(exc)) from None
    if text is None:
        raise SearchError(
            f"{where} is not a search folder: {store.join(where, SPACE_FILE)} is missing "
            "(give the --out folder of a search, or the experiment URL it printed)"
        )
    spec = parse_search_space(yaml.safe_load(text), source=store.join(where, SPACE_FILE))
    meta_text = _read_text(where, META_FILE)
    meta = json.loads(meta_text) if meta_text else {}
    root = meta.get("record") or where
    return SearchRecord(root=root, spec=spec, meta=meta)


def record_storage(record: SearchRecord, arg: str | None, local_dir: Path | None, *, export: bool = True) -> StudyStorage:
    """The study storage of a recorded search: ``--storage`` if given, else what the record says (``env:NAME``
    resolved again; the default SQLite file from ``local_dir`` or, failing that, from its published snapshot)."""
    if arg is not None:
        return study_storage(arg, local_dir or Path("."), record.spec.study_name, export=export)
    ref = record.meta.get("storage", "default")
    if ref.startswith("env:"):
        return study_storage(ref, local_dir or Path("."), record.spec.study_name, export=export)
    if "***" in ref:
        raise SearchError(f"the study of {record.root} is in {ref}, whose password is not recorded; pass it with --storage")
    if ref != "default":
        return study_storage(ref, local_dir or Path("."), record.spec.study_name, export=export)
    name = f"{record.spec.study_name}.db"
    if local_dir is not None and (local_dir / name).is_file():
        return study_storage(None, local_dir, record.spec.study_name, export=export)
    snap = record.sqlite_snapshot
    if snap and store.exists(snap):
        target = Path(local_dir) if local_dir is not None else Path(tempfile.mkdtemp(prefix="twohead-study-"))
        fetch_sqlite(snap, target / name)
        return study_storage(None, target, record.spec.study_name, export=export)
    local = record.meta.get("sqlite_local")
    if local and Path(local).is_file():
        return study_storage(None, Path(local).parent, record.spec.study_name, export=export)
    raise SearchError(
        f"the SQLite study of {record.root} is not there ({name} in the search folder, no published snapshot); "
        "pass --storage if it was moved"
    )
