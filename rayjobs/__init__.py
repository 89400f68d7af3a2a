"""Ray scale-out layer of twohead (the library, :mod:`twohead`, never imports Ray; only this package does).

One package per concern; the commands users type (``python -m rayjobs.<command>``, the ``ray job submit``
lines of the README) are thin entry modules at this level or a package's ``__main__``:

- :mod:`rayjobs.data` -- the data plane: URL storage, prepared datasets (shards + manifest), cluster labels, the
  Ray Data stream. Commands ``rayjobs.prepare``, ``rayjobs.labels``.
- :mod:`rayjobs.train` -- a training run on Ray Train, and the reporters through which :func:`twohead.loop.fit`
  reports to Ray Train and Tune. Command ``rayjobs.train``.
- :mod:`rayjobs.search` -- hyper-parameter search on Ray Tune with an Optuna study: driver, trials, searcher,
  study, search space, report, retraining, tracking. Commands ``rayjobs.search``, ``rayjobs.report``.
- :mod:`rayjobs.cluster` -- joining a Ray cluster, Ctrl-C around Ray's calls, ``cluster.yaml`` as data, a local
  autoscaling cluster. Command ``rayjobs.local_cluster``.
- :mod:`rayjobs.reproduce` -- the paper's tables and figure, and the paper's numbers. Command ``rayjobs.reproduce``.
- :mod:`rayjobs.bench` -- benchmarks. Commands ``rayjobs.bench`` (training step), ``rayjobs.bench_ray``,
  ``rayjobs.bench_decode``, ``rayjobs.bench_stream``, ``rayjobs.bench_search``.
- :mod:`rayjobs.faults` -- the fault matrix (command ``rayjobs.faults``).

A module imports another package's modules by their public names only, and no import goes in a circle
(tests/test_layout.py).
"""
