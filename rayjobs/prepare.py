"""``python -m rayjobs.prepare``: a twohead dataset as Parquet shards on object storage (:mod:`rayjobs.data.prepare`)."""

from rayjobs.data.prepare import main

if __name__ == "__main__":
    raise SystemExit(main())
