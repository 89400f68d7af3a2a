"""Ctrl-C / SIGTERM around Ray's own calls (rayjobs.cluster.signals), and the commands' one line when interrupted."""

from __future__ import annotations

import os
import signal

import pytest

from rayjobs.cluster import connect, signals
from rayjobs.data import prepare
from rayjobs.train import job as train


def test_held_records_the_signal_instead_of_raising_and_restores_the_handler():
    before = signal.getsignal(signal.SIGINT)
    with signals.held() as got:
        os.kill(os.getpid(), signal.SIGINT)  # would be a KeyboardInterrupt here without the hold
    with signals.held() as got_term:
        os.kill(os.getpid(), signal.SIGTERM)  # would end the process
    assert got == [signal.SIGINT] and got_term == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGINT) is before


def test_held_stops_at_the_second_signal_and_keeps_a_handler_installed_inside():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with signals.held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)  # a second Ctrl-C: the user means it
    rays = lambda s, f: None  # noqa: E731 - what ray.init installs for SIGTERM part-way
    try:
        with signals.held():
            signal.signal(signal.SIGTERM, rays)
        assert signal.getsignal(signal.SIGTERM) is rays
    finally:
        signal.signal(signal.SIGTERM, before)


def test_seen_notices_a_sigint_that_another_handler_took():
    calls = []
    old = signal.signal(signal.SIGINT, lambda s, f: calls.append(s))  # as Ray Train's fit installs its own
    try:
        with signals.seen() as got:
            os.kill(os.getpid(), signal.SIGINT)
        assert calls == [signal.SIGINT]  # that handler still ran
        assert got == [signal.SIGINT]
        with signals.seen() as quiet:
            pass
        assert quiet == []
    finally:
        signal.signal(signal.SIGINT, old)
    assert signal.set_wakeup_fd(-1) == -1  # the wakeup fd was given back


def test_seen_turns_sigterm_into_keyboard_interrupt_and_records_it():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with signals.seen() as got:
            os.kill(os.getpid(), signal.SIGTERM)
    assert got == [signal.SIGTERM]
    assert signal.getsignal(signal.SIGTERM) is before


def test_ctrl_c_while_ray_starts_tears_it_down_then_stops(monkeypatch):
    import ray

    shutdowns = []

    def init(**kw):  # Ctrl-C arrives while ray.init runs
        os.kill(os.getpid(), signal.SIGINT)
        return None

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: shutdowns.append(1))
    with pytest.raises(KeyboardInterrupt):
        connect.connect(connect.Target(address=None, source="test"), num_cpus=1)
    assert shutdowns == [1]


def test_a_ray_init_that_fails_after_a_ctrl_c_is_the_interrupt_not_a_bad_address(monkeypatch):
    import ray

    def init(**kw):  # the Ctrl-C also reached the raylet ray.init was starting
        os.kill(os.getpid(), signal.SIGINT)
        raise RuntimeError("Failed to start the raylet")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    with pytest.raises(KeyboardInterrupt):
        connect.connect(connect.Target(address=None, source="test"), num_cpus=1)


def _train_args(tmp_path):
    return ["--data", str(tmp_path / "d"), "--storage", str(tmp_path / "runs"), "--name", "r", "--preset", "smoke"]


def test_train_interrupted_while_ray_train_handles_sigint_says_one_line(tmp_path, monkeypatch, capsys):
    import ray

    def run_like_ray_train(cfg, args):
        # Ray Train's fit installs a SIGINT handler (graceful abort); the Ctrl-C also takes the local Ray down,
        # and the driver's ray.get then raises SystemExit(1)
        signal.signal(signal.SIGINT, lambda s, f: None)
        os.kill(os.getpid(), signal.SIGINT)
        raise SystemExit(1)

    old = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(train, "_run_from_args", run_like_ray_train)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    try:
        rc = train.main(_train_args(tmp_path))
    finally:
        signal.signal(signal.SIGINT, old)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130
    assert err == [
        f"error: SIGINT: run 'r' stopped; its checkpoints are kept in {tmp_path / 'runs' / 'r'}: "
        "rerun the same command to resume from the last one"
    ]


def test_train_any_error_after_a_signal_is_the_interrupt(tmp_path, monkeypatch, capsys):
    import ray

    class ActorDied(Exception):  # what Ray Train's abort may raise once the signal took its controller down
        pass

    def run(cfg, args):
        os.kill(os.getpid(), signal.SIGTERM)  # `ray job stop`: KeyboardInterrupt inside seen()

    def run_then_fail(cfg, args):
        signal.signal(signal.SIGINT, lambda s, f: None)
        os.kill(os.getpid(), signal.SIGINT)
        raise ActorDied("The actor died unexpectedly")

    old = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    try:
        monkeypatch.setattr(train, "_run_from_args", run)
        assert train.main(_train_args(tmp_path)) == 143
        monkeypatch.setattr(train, "_run_from_args", run_then_fail)
        assert train.main(_train_args(tmp_path)) == 130
    finally:
        signal.signal(signal.SIGINT, old)
    err = capsys.readouterr().err.strip().splitlines()
    assert [ln.split(":")[:2] for ln in err] == [["error", " SIGTERM"], ["error", " SIGINT"]]


def test_train_a_system_exit_without_a_signal_is_not_called_an_interrupt(tmp_path, monkeypatch):
    def run(cfg, args):
        raise SystemExit(3)

    monkeypatch.setattr(train, "_run_from_args", run)
    with pytest.raises(SystemExit) as e:
        train.main(_train_args(tmp_path))
    assert e.value.code == 3


@pytest.mark.parametrize("partial", [False, True])
def test_prepare_interrupted_says_what_it_left_and_what_to_do(tmp_path, monkeypatch, capsys, partial):
    out = tmp_path / "datasets"

    def interrupted(cfg, out_url, **kw):
        if partial:  # shards moved in, the manifest (published last) not yet
            (out / "d" / "train").mkdir(parents=True)
            (out / "d" / "train" / "part-00000.parquet").write_bytes(b"PAR1")
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare, "prepare", interrupted)
    rc = prepare.main(["--preset", "smoke", "--out", str(out), "--name", "d"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 130 and len(err) == 1
    if partial:
        assert err[0] == (
            f"error: interrupted: {out / 'd'} holds part of a dataset and no manifest (readers refuse it); "
            "run the same command with --overwrite"
        )
    else:
        assert err[0] == f"error: interrupted: nothing was written to {out / 'd'}; run the same command again"
