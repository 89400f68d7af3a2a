"""Benchmarks, each a command that prints a table (README, "Speed" and "Keeping GPUs fed at ImageNet-LT resolution").

- :mod:`~rayjobs.bench.step` -- img/s of the training step per backbone and method (``python -m rayjobs.bench``).
- :mod:`~rayjobs.bench.decode` -- JPEG decode + crop per CPU core (``python -m rayjobs.bench_decode``).
- :mod:`~rayjobs.bench.ray_layer` -- decode, the Ray Data stream from S3, Ray Train's step overhead
  (``python -m rayjobs.bench_ray``).
- :mod:`~rayjobs.bench.stream` -- the 224 px stream, Ray Data against a plain DataLoader
  (``python -m rayjobs.bench_stream``).
- :mod:`~rayjobs.bench.search` -- the smoke search, trials per hour (``python -m rayjobs.bench_search``).
"""
