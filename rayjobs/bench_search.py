"""``python -m rayjobs.bench_search``: the search benchmark (:mod:`rayjobs.bench.search`)."""

from rayjobs.bench.search import main

if __name__ == "__main__":
    raise SystemExit(main())
