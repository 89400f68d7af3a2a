"""Ray scale-out layer of twohead: shard preparation, cluster labels, streaming and Ray Train jobs.

Each module is a ``python -m rayjobs.<name>`` entry point meant for ``ray job submit``; see README,
"Run on a cluster". Only this package imports Ray.
"""
