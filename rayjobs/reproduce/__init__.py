"""Reproduce the paper's CIFAR-10-LT tables: many (method, imbalance, seed) runs packed on one device, resumable,
summarised as Markdown next to the published numbers.

    python -m rayjobs.reproduce --table cifar10-lt --dry-run                     # the plan, in launch order
    python -m rayjobs.reproduce --table cifar10-lt --concurrent 4 --time-budget 600
    python -m rayjobs.reproduce --table cifar10-lt --table cifar10-lt-ablation --report-only
    ray job submit -- python -m rayjobs.reproduce --table cifar10-lt --ray        # same runs as Ray tasks

Tables (:data:`TABLES`):

* ``cifar10-lt`` -- paper Table 1 on CIFAR-10-LT: every row the toolkit implements, in the paper's order (CE,
  Focal, Mixup, CB, LDAM, Ours, CB+Focal, LDAM+DRW, Ours-Full); columns imbalance 100, 50, 10.
* ``cifar10-lt-ablation`` -- paper Table 4 (neither head / FBH only / CDH only / both). The paper's ablation is on
  CIFAR-100-LT and Tiny-ImageNet-LT; without the CIFAR-100 train split it runs on CIFAR-10-LT and shows the
  paper's CIFAR-100 numbers as context only (no difference column).

Every cell is the mean +- sample std over seeds of the **final-epoch** test top-1, beside the paper's number and
the difference; Table 1 also shows, labelled as the baselines' protocol, the best test top-1 over the epochs after
the first learning-rate decay (``run.test_curve``; never used to choose anything). Below each table: recall by
class group, every test-time reading of the model (:mod:`twohead.readings`) and Fig. 3 (CE vs two-head).

Packages: :mod:`.plan` (what to run), :mod:`.run` (executing it), :mod:`.results` (finished runs on disk),
:mod:`.render` (Markdown, Fig. 3, archive), :mod:`.pack` (the data a reproduction reads, for an offline machine),
:mod:`.cli`. Nothing here imports Ray unless ``--ray`` is given.

Files. Full run folders (checkpoints, history, plots) go to ``--work`` (default ``runs/reproduce``):
``<work>/<dataset>/<run>/``, with ``plans/<run>.yaml`` (the resolved config) and ``logs/<run>.log`` beside them.
The small per-run JSON meant to be committed goes to ``--out`` (default ``results``):
``<out>/<dataset>/<run>.json``; the tables go to ``<out>/<table>.md`` and Fig. 3 to
``<out>/<dataset>/fig3-imb100.png``. Both are rewritten after every finished run (``--archive`` re-packs ``--out``
into one tar.gz), so whatever finished before a time limit is on disk.

Resume. Finished runs are never relaunched; an unfinished one resumes from its last checkpoint. Run names are
``<method>-imb<beta>-s<seed>``; any ``--epochs`` or ``--set`` that changes results adds a suffix (``-e<E>``,
``-<hash>``), so a shortened or modified run never mixes with the paper-recipe runs.
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
