"""rayjobs.search.study: storage URLs (env:NAME), the search record in a folder or a bucket, SQLite snapshots, PostgreSQL.

Real components: SQLite files, moto's S3 server, and the test run's PostgreSQL server (tests/with_postgres.sh).
"""

from __future__ import annotations

import json
import multiprocessing
import uuid

import optuna
import pytest
import yaml

from rayjobs.data import storage
from rayjobs.search.report import dashboard_command
from rayjobs.search.space import load_search_space
from rayjobs.search.study import (
    DRIVER_ENV,
    SearchError,
    fetch_sqlite,
    load_record,
    open_storage,
    open_study,
    publish_sqlite,
    record_storage,
    save_record,
    study_storage,
)

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def spec(tmp_path):
    p = tmp_path / "rec.yaml"
    p.write_text(
        yaml.safe_dump(
            {
                "base": {"preset": "smoke", "set": {"optim.epochs": 2, "optim.milestones": []}},
                "params": {"u": {"type": "int", "low": 2, "high": 30}},
                "search": {"num_samples": 4, "seed": 0},
            }
        )
    )
    return load_search_space(p)


def test_env_storage_is_read_from_the_environment_and_recorded_by_name(tmp_path, monkeypatch):
    monkeypatch.delenv("OPTUNA_STORAGE", raising=False)
    with pytest.raises(SearchError, match=r"--storage env:OPTUNA_STORAGE: the environment variable OPTUNA_STORAGE is not set"):
        study_storage("env:OPTUNA_STORAGE", tmp_path, "s")
    with pytest.raises(SearchError, match=r"--storage 'env:no-such\$': expected env:NAME"):
        study_storage("env:no-such$", tmp_path, "s")
    monkeypatch.setenv("OPTUNA_STORAGE", "postgresql+psycopg2://u:pw-5ec@db:5432/optuna")
    ss = study_storage("env:OPTUNA_STORAGE", tmp_path, "s")
    assert ss.url == "postgresql+psycopg2://u:pw-5ec@db:5432/optuna"
    assert (ss.ref, ss.env, ss.display) == ("env:OPTUNA_STORAGE", "OPTUNA_STORAGE", "env:OPTUNA_STORAGE")
    assert dashboard_command(ss.display) == 'optuna-dashboard "$OPTUNA_STORAGE"'


def test_a_literal_url_is_recorded_without_its_password(tmp_path, monkeypatch):
    monkeypatch.delenv(DRIVER_ENV, raising=False)
    ss = study_storage("postgresql+psycopg2://u:pw-5ec@db:5432/optuna", tmp_path, "s")
    assert ss.ref == "postgresql+psycopg2://u:***@db:5432/optuna" and ss.env == DRIVER_ENV
    default = study_storage(None, tmp_path, "s")
    assert default.ref == "default" and default.sqlite_path == (tmp_path / "s.db").resolve()


def _meta(data=None):
    return {"storage": "default", "study_name": "rec", "experiment": "s3://b/x/rec", "data": data}


def test_record_in_a_bucket_with_a_local_mirror_and_rerun_checks(spec, s3_server, tmp_path):
    bucket = s3_server.make_bucket(f"rec-{uuid.uuid4().hex[:8]}")
    root, mirror = f"s3://{bucket}/search/rec", tmp_path / "out"
    save_record(root, spec, _meta(), mirror=mirror, check_only=True)
    assert storage.list_files(root) == [] and not mirror.exists()  # check_only writes nothing
    save_record(root, spec, _meta(), mirror=mirror)
    assert storage.list_files(root) == ["search.json", "search_space.yaml"]
    assert json.loads((mirror / "search.json").read_text())["record"] == root
    rec = load_record(root)
    assert rec.root == root and rec.spec.params == spec.params and rec.experiment == "s3://b/x/rec"
    save_record(root, spec.replace(cpus_per_trial=4.0), _meta(), mirror=mirror)  # resources may change
    with pytest.raises(SearchError, match=r"holds a different search .*Differences: search.num_samples: 4 -> 9"):
        save_record(root, spec.replace(num_samples=9), _meta(), mirror=mirror, check_only=True)
    with pytest.raises(SearchError, match=r"was searched with --data None, now s3://b/d; pass the same --data to resume"):
        save_record(root, spec, _meta("s3://b/d"), mirror=mirror, check_only=True)
    with pytest.raises(SearchError, match=r"s3://.*/nothing is not a search folder: .*search_space.yaml is missing"):
        load_record(f"s3://{bucket}/nothing")


def test_sqlite_snapshot_in_a_bucket_rebuilds_the_study(spec, s3_server, tmp_path):
    bucket = s3_server.make_bucket(f"snap-{uuid.uuid4().hex[:8]}")
    work = tmp_path / "work"
    work.mkdir()
    ss = study_storage(None, work, spec.study_name)
    study = open_study(ss.url, spec)
    for v in (1.5, 2.5, 0.5):
        t = study.ask()
        spec.suggest(t)
        study.tell(t, v)
    snap = f"s3://{bucket}/search/rec/rec.db"
    publish_sqlite(ss.sqlite_path, snap)
    assert not fetch_sqlite(snap, ss.sqlite_path)  # never over an existing working copy
    root = f"s3://{bucket}/search/rec"
    save_record(root, spec, {**_meta(), "sqlite_snapshot": snap})
    again = record_storage(load_record(root), None, tmp_path / "elsewhere")  # a new working directory
    assert again.sqlite_path == (tmp_path / "elsewhere" / "rec.db").resolve()
    values = [t.value for t in optuna.load_study(study_name=spec.study_name, storage=again.url).trials]
    assert values == [1.5, 2.5, 0.5]


def test_a_hidden_password_must_be_given_again(spec, tmp_path):
    save_record(str(tmp_path), spec, {**_meta(), "storage": "postgresql+psycopg2://u:***@db/o"})
    with pytest.raises(SearchError, match=r"is in postgresql\+psycopg2://u:\*\*\*@db/o, whose password is not recorded"):
        record_storage(load_record(tmp_path), None, tmp_path)


def _ask_tell(url: str, spec_path: str, n: int, out) -> None:
    spec = load_search_space(spec_path)
    study = open_study(url, spec)
    numbers = []
    for i in range(n):
        t = study.ask()
        spec.suggest(t)
        study.tell(t, float(i))
        numbers.append(t.number)
    out.put(numbers)


def test_postgres_study_under_concurrent_drivers(postgres_url, spec, tmp_path):
    """Four processes create the schema and the study of a new database at once, then ask/tell concurrently."""
    spec_path = tmp_path / "rec.yaml"
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_ask_tell, args=(postgres_url, str(spec_path), 5, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    numbers = sorted(n for _ in procs for n in q.get(timeout=10))
    assert numbers == list(range(20))
    study = optuna.load_study(study_name=spec.study_name, storage=open_storage(postgres_url))
    assert len(study.trials) == 20 and all(t.state.name == "COMPLETE" for t in study.trials)


def test_postgres_connections_dropped_by_the_server_are_reopened(postgres_url, spec):
    """The server drops every connection (as a restart or a failover does) between two calls of a search: the
    next call reconnects instead of failing the search with "server closed the connection unexpectedly"."""
    import sqlalchemy as sa

    storage = open_storage(postgres_url)
    study = open_study(postgres_url, spec, storage=storage)
    study.tell(study.ask(), 1.0)  # the pool now holds an open connection
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        dropped = c.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).scalar()
    admin.dispose()
    assert dropped >= 1  # the storage's pooled connection was among them
    study.tell(study.ask(), 2.0)  # through a new connection
    assert [t.value for t in optuna.load_study(study_name=spec.study_name, storage=storage).trials] == [1.0, 2.0]


def test_a_schema_race_on_a_new_sqlite_file_is_waited_out(tmp_path, monkeypatch):
    """Another process (a dashboard, `optuna.load_study`) creates the schema of the same new SQLite file at the same
    moment: SQLite refuses the second version row ("UNIQUE constraint failed"), and opening waits and tries again
    instead of failing the search."""
    import sqlite3

    import sqlalchemy.exc

    from rayjobs.search import study as study_mod

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError(
                "INSERT INTO alembic_version", {}, sqlite3.IntegrityError("UNIQUE constraint failed: alembic_version.version_num")
            )
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    monkeypatch.setattr(study_mod.time, "sleep", lambda s: None)
    url = f"sqlite:///{tmp_path / 'new.db'}"
    assert isinstance(open_storage(url), real) and calls == [url, url]
    # an error a retry cannot cure is still said at once
    monkeypatch.setattr(optuna.storages, "RDBStorage", lambda url, **kw: (_ for _ in ()).throw(ValueError("bad url")))
    with pytest.raises(SearchError, match="cannot open Optuna storage .*ValueError: bad url"):
        open_storage(url)
