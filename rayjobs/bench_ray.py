"""``python -m rayjobs.bench_ray``: the Ray layer benchmark (:mod:`rayjobs.bench.ray_layer`)."""

from rayjobs.bench.ray_layer import main

if __name__ == "__main__":
    raise SystemExit(main())
