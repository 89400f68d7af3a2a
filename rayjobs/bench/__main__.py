"""``python -m rayjobs.bench``: the training-step benchmark, :func:`rayjobs.bench.step.main`."""

from rayjobs.bench.step import main

raise SystemExit(main())
