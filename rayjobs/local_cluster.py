"""``python -m rayjobs.local_cluster``: a local autoscaling Ray cluster from cluster.yaml (:mod:`rayjobs.cluster.local`)."""

from rayjobs.cluster.local import main

if __name__ == "__main__":
    raise SystemExit(main())
