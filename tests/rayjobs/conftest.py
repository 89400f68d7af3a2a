"""Fixtures of the Ray-layer tests: a fresh database on the real PostgreSQL server of the test run."""

from __future__ import annotations

import os
import uuid

import pytest

POSTGRES_ENV = "TWOHEAD_TEST_POSTGRES_URL"


@pytest.fixture
def postgres_url() -> str:
    """URL (with password) of a new, empty database on the server ``tests/with_postgres.sh`` started; dropped after."""
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        pytest.skip(
            f"no PostgreSQL server: {POSTGRES_ENV} is unset; run the tests through tests/with_postgres.sh (as .ci/run "
            "does), which starts one"
        )
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as c:
        c.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as c:
            c.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
