"""``python -m rayjobs.bench_decode``: the decode benchmark (:mod:`rayjobs.bench.decode`)."""

from rayjobs.bench.decode import main

if __name__ == "__main__":
    raise SystemExit(main())
