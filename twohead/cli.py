"""``twohead`` command line: train, eval, predict, export, describe.

    twohead train    [--config FILE.yaml] [--preset NAME] [--set section.key=value ...] [--out DIR]
                     [--mlflow [URI]] [--tensorboard]
    twohead eval     RUN_DIR_OR_CHECKPOINT [--split test|val] [--set ...]
    twohead predict  RUN_DIR_OR_CHECKPOINT IMAGES... [--top-k K] [--json]
    twohead export   RUN_DIR_OR_CHECKPOINT [--format torchscript|onnx] [--out FILE]
    twohead describe [--config FILE.yaml] [--preset NAME] [--set ...]

Bad input (config, data, checkpoint, images) exits with status 2 and one line naming it and what is allowed.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path

from .config import PRESETS, ConfigError, TrainConfig, apply_overrides, load_config


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML file with sections data/model/method/optim/run")
    p.add_argument("--preset", choices=sorted(PRESETS), help="a named recipe (smoke, cifar10-lt, imagenet-lt, ...)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one field, e.g. --set method.u=20 --set optim.epochs=10 (repeatable)",
    )
    p.add_argument("--out", help="results folder (run.out)")
    p.add_argument("--name", help="run name (run.name)")


def _load(args) -> TrainConfig:
    cfg = load_config(args.config, preset=args.preset, overrides=list(args.overrides))
    # Paths are taken verbatim (no YAML parsing); `--out ""` is an error to report, not an option to ignore.
    given = {"run.out": getattr(args, "out", None), "run.name": getattr(args, "name", None)}
    given = {k: v for k, v in given.items() if v is not None}
    return apply_overrides(cfg, given) if given else cfg


class _Stopped(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so the run stops between two statements and says where it can resume."""

    signum = signal.SIGTERM


def _stop(signum, _frame):
    raise _Stopped()


def _resume_point(out: Path) -> str:
    """Which epoch a rerun resumes from: the newest readable checkpoint, as the rerun will pick it."""
    from .runs import LocalReporter

    try:
        state = LocalReporter(out).peek()
    except Exception:  # noqa: BLE001 - only a message depends on it; never hide the stop itself
        state = None
    if state is None:
        return "from the start (no checkpoint was written yet)"
    return f"from epoch {int(state['epoch'])} (the last checkpoint)"


def tracking_args(p: argparse.ArgumentParser, where: str) -> None:
    """``--mlflow [URI]``, ``--mlflow-experiment``, ``--tensorboard`` (the ``twohead[tracking]`` extra)."""
    p.add_argument(
        "--mlflow",
        nargs="?",
        const="",
        default=None,
        metavar="URI",
        help="log params, per-epoch and final metrics and plots to MLflow: a tracking server (http://...), "
        "sqlite:///FILE.db or a folder; without URI, $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db here (mlflow ui)",
    )
    p.add_argument("--mlflow-experiment", default=None, metavar="NAME", help="MLflow experiment name (default: twohead)")
    p.add_argument("--tensorboard", action="store_true", help=f"write TensorBoard event files {where}")


def tracking_settings(args, **kw):
    """The run's :class:`~twohead.tracking.TrackingSettings` from the flags (None: nothing tracked); checks that
    the extra is installed before anything runs."""
    from .tracking import TrackingSettings, check_mlflow, require, resolve_uri

    if args.mlflow is None and not args.tensorboard:
        if args.mlflow_experiment is not None:
            raise ConfigError("--mlflow-experiment names the MLflow experiment of --mlflow; add --mlflow [URI]")
        return None
    if args.tensorboard:
        require("tensorboard", "--tensorboard")
    uri = resolve_uri(args.mlflow) if args.mlflow is not None else None
    experiment = args.mlflow_experiment or "twohead"
    if uri is not None:
        check_mlflow(uri, experiment)
    return TrackingSettings(mlflow_uri=uri, experiment=experiment, tensorboard=args.tensorboard, **kw)


def cmd_train(args) -> int:
    from .loop import fit
    from .tracking import open_tracking

    cfg = _load(args)
    out = Path(cfg.run.out) / cfg.run_name()
    settings = tracking_settings(args)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        with open_tracking(settings) as tracking:
            result = fit(cfg, tracking=tracking)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        print(
            f"twohead: {signal.Signals(signum).name}: stopped {out}; rerun the same command to resume {_resume_point(out)}",
            file=sys.stderr,
        )
        return 128 + int(signum)
    finally:
        signal.signal(signal.SIGTERM, previous)
    print(
        json.dumps(
            {k: result[k] for k in ("top1", "many", "medium", "few")}
            | {"val_top1": (result.get("val") or {}).get("top1"), "metrics": str(out / "metrics.json")}
        )
    )
    return 0


def cmd_eval(args) -> int:
    from .inference import load

    device = args.device or next((v for k, v in _pairs(args.overrides) if k == "optim.device"), "auto")
    report = load(args.run, device=device, reading=args.reading).eval_split(args.split, overrides=args.overrides)
    report.pop("confusion", None)
    print(json.dumps(report, indent=1))
    return 0


def _pairs(overrides: list[str]) -> list[tuple[str, str]]:
    return [(k.strip(), v.strip()) for k, _, v in (o.partition("=") for o in overrides)]


def cmd_predict(args) -> int:
    from .inference import load

    clf = load(args.run, device=args.device or "auto", reading=args.reading)
    if not 1 <= args.top_k <= clf.num_classes:
        raise ConfigError(f"--top-k {args.top_k} must be between 1 and {clf.num_classes} (the model's classes)")
    pred = clf.predict(args.images, batch_size=args.batch_size)
    ids, probs = pred.top_k(args.top_k)
    for i, f in enumerate(pred.files):
        top = [(int(c), clf.class_names[c], float(p)) for c, p in zip(ids[i], probs[i])]
        if args.json:
            line = {"file": f, "class": top[0][0], "name": top[0][1], "prob": top[0][2]}
            if args.top_k > 1:
                line["top_k"] = [{"class": c, "name": n, "prob": p} for c, n, p in top]
            print(json.dumps(line))
        else:
            print("\t".join([str(f), *(f"{n}\t{p:.4f}" for _, n, p in top)]))
    return 0


def cmd_export(args) -> int:
    from .export import SUFFIXES, export, input_layout
    from .inference import load

    clf = load(args.run, device="cpu")
    out = Path(args.out) if args.out else clf.path.parent / f"model{SUFFIXES[args.format]}"
    export(clf, out, args.format, input=args.input, overwrite=args.force)
    layout = input_layout(args.input, clf.image_size)
    print(
        json.dumps({"file": str(out), "format": args.format, "input": layout, "output": f"probabilities [N, {clf.num_classes}]"})
    )
    return 0


def cmd_describe(args) -> int:
    from .data import describe_counts
    from .division import DivisionPlan
    from .schedule import explain_lr, lr_at

    cfg = _load(args)
    info = describe_counts(cfg.data)
    counts = info["train_counts"]
    names = info.get("class_names") or [str(i) for i in range(len(counts))]
    # DivisionPlan refuses a class with fewer samples than clusters, as training would (Eq. 3 needs u_c <= n_c).
    plan = DivisionPlan.from_counts(counts, cfg.method.u, cfg.method.rounding) if cfg.spec.cdh else None
    ucs = list(plan.u_per_class) if plan is not None else [1] * len(counts)
    print(
        f"dataset {cfg.data.dataset}  imbalance {cfg.data.imbalance:g}  method {cfg.method.name}  u={cfg.method.u} ({cfg.method.rounding})"
    )
    print(f"{'class':>5}  {'name':<20} {'n_c':>6} {'u_c':>4}")
    for c, (name, n, uc) in enumerate(zip(names, counts, ucs)):
        print(f"{c:>5}  {str(name)[:20]:<20} {n:>6} {uc:>4}")
    print(f"train {sum(counts)}  classes {len(counts)}  K = sum(u_c) = {sum(ucs)}")
    print(f"val {info.get('val_total', 0)}  test {info.get('test_total', 0)}")
    for note in info.get("notes") or []:
        print(f"note: {note}")
    print(f"learning rate ({cfg.optim.schedule}, {cfg.optim.epochs} epochs; epochs are 0-based):")
    for e in _lr_epochs(cfg):
        print(f"  epoch {e:>3}: {lr_at(cfg, e):<8.3g} {explain_lr(cfg, e)}")
    return 0


def _lr_epochs(cfg: TrainConfig) -> list[int]:
    """The epochs where the schedule changes character: warm-up start and end, each side of every milestone, last."""
    o = cfg.optim
    marks = {0, o.epochs - 1}
    if o.warmup_epochs:
        marks |= {o.warmup_epochs - 1, o.warmup_epochs}
    for m in o.milestones:
        marks |= {m - 1, m}
    if o.schedule == "cosine":
        marks |= {o.epochs // 2}
    return sorted(e for e in marks if 0 <= e < o.epochs)


def _inference_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="auto (default), cpu, cuda or cuda:N")
    p.add_argument("--reading", choices=("max", "sum", "fuse", "fbh"), help="K-to-C reading (default: the run's model.inference)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="twohead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train one model (single process)")
    _config_args(p)
    tracking_args(p, "into the run folder's tensorboard/ (tensorboard --logdir OUT)")
    p.set_defaults(func=cmd_train)
    run_help = "run folder (holding checkpoint.pt) or a checkpoint file"
    p = sub.add_parser("eval", help="evaluate a run folder or checkpoint")
    p.add_argument("run", help=run_help)
    p.add_argument("--split", choices=("test", "val"), default="test")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="how to read the data, e.g. --set data.root=DIR --set data.eval_fraction=0.2 (not the model's keys)",
    )
    _inference_args(p)
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("predict", help="classify images with a trained run: one line per image (file, class, probability)")
    p.add_argument("run", help=run_help)
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or .npy uint8 N x H x W x 3 arrays")
    p.add_argument("--top-k", type=int, default=1, metavar="K", help="print the K most probable classes (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per line: file, class, name, prob (and top_k)")
    p.add_argument("--batch-size", type=int, default=None, metavar="N")
    _inference_args(p)
    p.set_defaults(func=cmd_predict)
    p = sub.add_parser("export", help="write a run's model as a TorchScript or ONNX C-way classifier (probabilities out)")
    p.add_argument("run", help=run_help)
    p.add_argument("--format", choices=("torchscript", "onnx"), default="torchscript")
    p.add_argument("--out", help="output file (default: model.pt / model.onnx in the run folder)")
    p.add_argument(
        "--input",
        choices=("uint8", "float"),
        default="uint8",
        help="uint8 [N, S, S, 3] (default) or float [N, 3, S, S] in [0, 1]",
    )
    p.add_argument("--force", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("describe", help="print the LT class counts and u_c per class (Eq. 3) of a config")
    _config_args(p)
    p.set_defaults(func=cmd_describe)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from .data import DataError
    from .division import DivisionError
    from .export import ExportError
    from .runs import CheckpointError, CheckpointWriteError, RunExistsError

    try:
        return args.func(args)
    except CheckpointWriteError as e:  # the machine, not the input: exit 1
        print(f"twohead: error: {e}", file=sys.stderr)
        return 1
    except (ConfigError, DataError, DivisionError, RunExistsError, CheckpointError, ExportError) as e:
        print(f"twohead: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the machine, not the input: a full disk, a read-only or vanished folder
        from .runs import write_failure

        where = getattr(e, "filename", None) or "a file"
        print(f"twohead: error: could not access {where}: {write_failure(e, Path(str(where)).parent)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
