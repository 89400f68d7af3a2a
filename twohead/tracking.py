"""A run's results where users already look: MLflow and TensorBoard (the optional ``twohead[tracking]`` extra).

:func:`open_tracking` gives the loop a :class:`Tracking` that, on the main rank only, logs

- **params**: the resolved config, flattened (``optim.lr``, ``method.u``, ...), once;
- **per-epoch metrics** at step = epoch: every scalar of the epoch's ``history.jsonl`` line (train loss, lr,
  img/s, val top-1, many / medium / few, worst-class recall, every reading and post-hoc variant);
- **final metrics** at step = epochs: the test split under every reading and post-hoc variant (``test/...``), the
  median img/s and the wall time (``run/...``);
- **artifacts**: the run folder's plots, ``metrics.json``, ``config.yaml`` and the model card.

MLflow: the tracking URI given (a server, ``sqlite:///...``, a folder), else MLflow's own default
(``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working folder, what ``mlflow ui`` opens there).
A resumed run continues its MLflow run (found by the tag ``twohead.run``: the run folder, or a Ray run's storage
URL) instead of starting another; its status ends FINISHED, KILLED (Ctrl-C / SIGTERM) or FAILED.
TensorBoard: event files in ``<run folder>/tensorboard`` (``tensorboard --logdir`` on the run or results folder).

Ray-free: Ray Train workers and the single-process CLI use it alike; a search logs its trials from the driver
with Ray's ``MLflowLoggerCallback`` instead (:mod:`rayjobs.search.tracking`).
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ConfigError, flatten

__all__ = [
    "RUN_TAG",
    "Tracking",
    "TrackingSettings",
    "TrackingUnavailable",
    "final_metrics",
    "finite_numbers",
    "flat_scalars",
    "log_batch",
    "metric_key",
    "open_tracking",
    "check_mlflow",
    "experiment_id",
    "store_client",
    "require",
    "resolve_uri",
]

log = logging.getLogger("twohead")

RUN_TAG = "twohead.run"  # the tag that finds a run's MLflow run again on resume
TB_SUBDIR = "tensorboard"
# What of metrics.json is logged as the final test metrics (the rest are facts of the run: counts, norms, config).
_TEST_KEYS = (
    "top1",
    "many",
    "medium",
    "few",
    "worst_class",
    "ece",
    "nll",
    "by_inference",
    "by_inference_groups",
    "posthoc",
    "posthoc_groups",
)
_ARTIFACT_SUFFIXES = (".png",)
_ARTIFACT_FILES = ("metrics.json", "config.yaml", "model_card.json", "model_card.md", "data_report.json")


class TrackingUnavailable(ConfigError):
    """A tracking flag was given but its package (the ``twohead[tracking]`` extra) is not installed."""


def require(module: str, flag: str) -> None:
    """One clear line when ``flag`` needs ``module`` and it is missing (exit 2 at the CLI)."""
    if importlib.util.find_spec(module) is None:
        raise TrackingUnavailable(
            f"{flag} needs the {module} package, which is not installed: pip install 'twohead[tracking]' "
            f"(MLflow, TensorBoard, tensorboardX)"
        )


def flat_scalars(metrics: dict, prefix: str = "") -> dict:
    """Scalars of ``metrics`` with nested dicts flattened to ``outer/inner`` keys (lists are left out)."""
    flat = flatten(metrics, "/", prefix)
    return {k: v for k, v in flat.items() if v is None or isinstance(v, (bool, int, float, str))}


_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")


def metric_key(key: str) -> str:
    """A metric / param name MLflow accepts (alphanumerics, ``_-. /:``); anything else becomes ``_``."""
    return _BAD_KEY.sub("_", key)[:250]


def log_batch(
    client: Any,
    run_id: str,
    *,
    metrics: dict[str, float] | None = None,
    step: int = 0,
    params: dict | None = None,
    tags: dict | None = None,
) -> None:
    """One run's metrics (at ``step``), params and tags in as few requests as MLflow's per-request limits allow
    (1000 metrics, 100 params)."""
    from mlflow.entities import Metric, Param, RunTag

    now = int(time.time() * 1000)
    ms = [Metric(metric_key(k), float(v), now, step) for k, v in (metrics or {}).items()]
    ps = [Param(metric_key(k), str(v)[:6000]) for k, v in (params or {}).items()]
    ts = [RunTag(k, str(v)) for k, v in (tags or {}).items()]
    for i in range(max(1, math.ceil(len(ms) / 1000), math.ceil(len(ps) / 100))):
        client.log_batch(
            run_id, metrics=ms[i * 1000 : (i + 1) * 1000], params=ps[i * 100 : (i + 1) * 100], tags=ts if i == 0 else []
        )


def finite_numbers(flat: dict) -> dict[str, float]:
    """The finite numbers of a flat dict under MLflow-safe names (bools, strings, None and NaN left out: MLflow and
    TensorBoard plot numbers)."""
    out = {}
    for k, v in flat.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            continue
        out[metric_key(k)] = float(v)
    return out


def final_metrics(result: dict) -> dict[str, float]:
    """The final metrics of a finished run (``metrics.json``): ``test/...`` under every reading and variant, plus
    ``run/train_img_per_s`` and ``run/wall_s``."""
    test = flat_scalars({k: result[k] for k in _TEST_KEYS if k in result}, "test/")
    run = {f"run/{k}": result[k] for k in ("train_img_per_s", "wall_s") if k in result}
    return finite_numbers({**test, **run})


def resolve_uri(uri: str | None) -> str:
    """The tracking URI to use: ``uri``, else MLflow's default; relative local paths made absolute (a Ray worker
    or a later ``mlflow ui`` may run in another folder)."""
    require("mlflow", "--mlflow")
    import mlflow

    uri = uri or mlflow.get_tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///") :]).resolve())
    if "://" not in uri and not uri.startswith(("databricks", "sqlite:")):
        return Path(uri).resolve().as_uri()
    return uri


def check_mlflow(uri: str, experiment: str) -> None:
    """Reach the tracking store once before the run starts: a wrong URI is a one-line error, not a failed run."""
    from mlflow import MlflowClient

    if uri.startswith(("sqlite:///", "file:")):
        local = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else Path(uri.removeprefix("file://"))
        if not local.exists():  # a new store: created by the run itself, nothing is written before the run starts
            from .folders import OutputFolderError, check_writable

            try:
                check_writable(local.parent if uri.startswith("sqlite:") else local, "--mlflow")
            except OutputFolderError as e:
                raise TrackingUnavailable(str(e)) from None
            return
    # One quick try: MLflow's own HTTP retries (and urllib3's warning per retry) would make an unreachable server a
    # minutes-long hang with a screen of warnings here.
    quick = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    saved = {k: os.environ.get(k) for k in quick}
    os.environ.update({k: v for k, v in quick.items() if saved[k] is None})
    urllib3_log = logging.getLogger("urllib3")
    level = urllib3_log.level
    urllib3_log.setLevel(logging.ERROR)
    try:
        MlflowClient(tracking_uri=uri).get_experiment_by_name(experiment)
    except Exception as e:  # noqa: BLE001 - unsupported scheme, unreachable server, unreadable store: one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TrackingUnavailable(
            f"--mlflow {uri}: cannot use this tracking store ({first}); check the URI or the server"
        ) from None
    finally:
        urllib3_log.setLevel(level)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)


def store_client(uri: str) -> Any:
    """An ``MlflowClient`` of ``uri``; a new SQLite store's folder is made first (SQLite makes the file, not the folder)."""
    from mlflow import MlflowClient

    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client: Any, name: str, uri: str) -> str:
    """The id of MLflow experiment ``name``, created when missing. With a SQLite store its artifacts go beside the
    database file (``mlruns/`` there), not into whatever folder the command happened to run in."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if uri.startswith("sqlite:///"):
        location = (Path(uri[len("sqlite:///") :]).parent / "mlruns").as_uri()
    return client.create_experiment(name, artifact_location=location)


@dataclass
class TrackingSettings:
    """What a run logs where (picklable: a Ray Train worker receives it from the driver)."""

    mlflow_uri: str | None = None  # resolved MLflow tracking URI; None = no MLflow
    experiment: str = "twohead"  # MLflow experiment name
    tensorboard: bool = False  # TensorBoard event files in <run folder>/tensorboard
    run_key: str | None = None  # the tag twohead.run (default: the run folder's absolute path)
    run_name: str | None = None  # the MLflow run name (default: the run folder's name)
    tags: dict = field(default_factory=dict)  # extra MLflow tags

    @property
    def enabled(self) -> bool:
        return self.mlflow_uri is not None or self.tensorboard


class Tracking:
    """The loop's tracking hooks (main rank). ``start`` is called once the run folder is claimed, so bad input never
    leaves an MLflow run behind; :meth:`close` ends the run with a status."""

    def __init__(self, settings: TrackingSettings):
        self.settings = settings
        self.client: Any = None
        self.run_id: str | None = None
        self.writer: Any = None
        self.out: Path | None = None

    # ---- the loop's hooks ---------------------------------------------------------------------------
    def start(self, cfg: Any, out: Path) -> None:
        s = self.settings
        self.out = Path(out)
        if s.mlflow_uri is not None and self.run_id is None:
            self._start_mlflow(cfg)
        if s.tensorboard and self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.out / TB_SUBDIR))

    def log_epoch(self, metrics: dict) -> None:
        step = int(metrics["epoch"])
        values = finite_numbers(flat_scalars({k: v for k, v in metrics.items() if k != "epoch"}))
        self._log(values, step)

    def log_result(self, result: dict, out: Path) -> None:
        self._log(final_metrics(result), int(result.get("epochs", 0)))
        with self._guard("the artifacts"):
            for p in sorted(Path(out).iterdir()) if self.run_id is not None else []:
                if p.is_file() and (p.suffix in _ARTIFACT_SUFFIXES or p.name in _ARTIFACT_FILES):
                    self.client.log_artifact(self.run_id, str(p))

    def close(self, status: str = "FINISHED") -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status)
            self.run_id = None

    # ---- MLflow --------------------------------------------------------------------------------------
    def _start_mlflow(self, cfg: Any) -> None:
        s = self.settings
        client = store_client(s.mlflow_uri)
        exp_id = experiment_id(client, s.experiment, s.mlflow_uri)
        key = s.run_key or str(self.out.resolve())
        escaped = key.replace("'", "\\'")
        found = client.search_runs([exp_id], filter_string=f"tags.`{RUN_TAG}` = '{escaped}'", max_results=1)
        if found:
            self.run_id = found[0].info.run_id
            client.update_run(self.run_id, status="RUNNING")
            log.info("MLflow: continuing run %s in experiment %s", self.run_id, s.experiment)
        else:
            from .model_card import code_version

            tags = {RUN_TAG: key, "twohead.method": cfg.method.name, "twohead.dataset": cfg.data.dataset}
            tags.update({f"twohead.{k}": str(v) for k, v in code_version().items() if v is not None})
            tags.update({k: str(v) for k, v in s.tags.items()})
            run = client.create_run(exp_id, run_name=s.run_name or self.out.name, tags=tags)
            self.run_id = run.info.run_id
            # The resolved config under the names --set takes (optim.lr, method.u); lists as [a, b].
            params = {k: list(v) if isinstance(v, tuple) else v for k, v in flatten(cfg.to_dict()).items()}
            log_batch(client, self.run_id, params=params)
        self.client = client

    def _log(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for k, v in values.items():
                self.writer.add_scalar(k, v, step)
            self.writer.flush()
        if self.run_id is None:
            return
        with self._guard(f"step {step}"):
            log_batch(self.client, self.run_id, metrics=values, step=step)

    @contextlib.contextmanager
    def _guard(self, what: str) -> Iterator[None]:
        """A tracking server that stops answering mid-run costs one warning, never the run: MLflow logging stops
        for the rest of it (the run folder holds everything; the rerun's MLflow run is the same one)."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - HTTP errors, a locked or vanished store: the training goes on
            log.warning("MLflow: could not log %s (%s: %s); no more MLflow logging in this run", what, type(e).__name__, e)
            self.run_id = None


class open_tracking:  # noqa: N801 - used as a context manager, like open()
    """``with open_tracking(settings) as tracking: fit(cfg, tracking=tracking)``; ``tracking`` is None when
    nothing is tracked. The MLflow run ends FINISHED, KILLED (KeyboardInterrupt / SystemExit) or FAILED."""

    def __init__(self, settings: TrackingSettings | None):
        self.tracking = Tracking(settings) if settings is not None and settings.enabled else None

    def __enter__(self) -> Tracking | None:
        return self.tracking

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tracking is None:
            return
        status = (
            "FINISHED" if exc_type is None else "KILLED" if issubclass(exc_type, (KeyboardInterrupt, SystemExit)) else "FAILED"
        )
        try:
            self.tracking.close(status)
        except Exception as e:  # noqa: BLE001 - a tracking server gone at the end must not hide the run's own outcome
            log.warning("tracking: could not end the run (%s: %s)", type(e).__name__, e)
