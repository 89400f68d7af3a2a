"""``python -m rayjobs.bench_stream``: the 224 px stream benchmark (:mod:`rayjobs.bench.stream`)."""

from rayjobs.bench.stream import main

if __name__ == "__main__":
    raise SystemExit(main())
