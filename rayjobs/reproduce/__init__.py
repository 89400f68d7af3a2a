"""Reproduce the paper's CIFAR-10-LT tables (``python -m rayjobs.reproduce``; its ``--help``, from
:mod:`.cli`, has the tables, the files it writes and how it resumes).

Modules: :mod:`.plan` (what to run: ``TABLES``, ``plan_runs``), :mod:`.run` (executing it: ``Runner``,
``LocalExecutor``, ``RayExecutor``), :mod:`.results` (finished runs on disk), :mod:`.render` / :mod:`.render_paired` /
:mod:`.cells` / :mod:`.notes` / :mod:`.paired` (Markdown, Fig. 3, archive), :mod:`.pack` (the data a reproduction
reads, for an offline machine), :mod:`.paper` (the paper's published numbers as data), :mod:`.cli`. Nothing here
imports Ray unless ``--ray`` is given. The names below are re-exported for scripts and tests.
"""

from __future__ import annotations

from .cli import main
from .plan import METHOD_LABELS, TABLES, RunSpec, TableSpec, plan_runs
from .render import fig3, render_table, write_report
from .results import StaleResultError, finished_result, git_commit, run_dir, slim_path, slim_result
from .run import LocalExecutor, RayExecutor, Runner, RunStatus

__all__ = [
    "TableSpec",
    "TABLES",
    "METHOD_LABELS",
    "RunSpec",
    "RunStatus",
    "plan_runs",
    "finished_result",
    "slim_result",
    "slim_path",
    "run_dir",
    "StaleResultError",
    "git_commit",
    "Runner",
    "LocalExecutor",
    "RayExecutor",
    "render_table",
    "write_report",
    "fig3",
    "main",
]
