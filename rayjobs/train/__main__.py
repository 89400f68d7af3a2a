"""``python -m rayjobs.train``: :func:`rayjobs.train.job.main`."""

from rayjobs.train.job import main

raise SystemExit(main())
