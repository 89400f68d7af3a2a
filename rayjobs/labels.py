"""``python -m rayjobs.labels``: cluster labels of the class-division head beside the shards (:mod:`rayjobs.data.labels`)."""

from rayjobs.data.labels import main

if __name__ == "__main__":
    raise SystemExit(main())
