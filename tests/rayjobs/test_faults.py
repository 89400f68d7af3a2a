"""The fault matrix (rayjobs.faults) against real runs: every fault leaves finished work intact and a rerun ends
with the result of an uninterrupted run."""

from __future__ import annotations

import pytest

from rayjobs import faults

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def work(tmp_path_factory, data_root):
    return tmp_path_factory.mktemp("faults")


@pytest.mark.parametrize("name", list(faults.SCENARIOS))
def test_fault_loses_nothing_finished(work, name):
    rows = faults.run_scenarios([name], work)
    if not rows:  # e.g. no PostgreSQL binaries (.ci/run installs them)
        pytest.skip(f"{name} cannot run on this machine")
    (row,) = rows
    # the whole row in the message: pytest would shorten the Outcome's repr, and the outcome says what went wrong
    assert row.ok, f"{row.fault} at {row.where}: {row.outcome} (data lost {row.data_lost}, trials lost {row.trials_lost})"
    assert row.data_lost == 0 and row.trials_lost in (0, None), row
    # At most the epoch in flight, per run that was cut (a checkpoint every epoch here): one run, or the search's two
    # concurrent trials.
    assert (
        0 <= row.epochs_lost <= (faults.TINY_SEARCH["search"]["max_concurrent"] if "search" in name or "postgres" in name else 1)
    ), row
