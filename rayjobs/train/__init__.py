"""A training run on Ray Train (``python -m rayjobs.train``).

- :mod:`~rayjobs.train.job` -- the job: checks, the TorchTrainer, the per-worker function around
  :func:`twohead.loop.fit`, its one-line failures (``run``, ``train_loop_per_worker``, ``main``).
- :mod:`~rayjobs.train.reporting` -- the loop's per-epoch metrics and checkpoints into Ray Train or Ray Tune
  (``TrainReporter``, ``TuneReporter``); the search's trials report through it too.
"""
