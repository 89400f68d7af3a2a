"""Where Ray runs and how a command joins it.

- :mod:`~rayjobs.cluster.connect` -- which Ray cluster a command joins, checked within seconds before anything is
  written; the one place that calls ``ray.init`` (``resolve``, ``connect``, ``RayAddressError``).
- :mod:`~rayjobs.cluster.signals` -- Ctrl-C and SIGTERM around Ray's own calls (``held``, ``seen``).
- :mod:`~rayjobs.cluster.config` -- ``cluster.yaml`` as data: its capacity per accelerator type, its node types
  scaled down to one machine (``load_cluster_config``, ``cluster_ceiling``, ``local_node_types``).
- :mod:`~rayjobs.cluster.local` -- a local autoscaling Ray cluster made from ``cluster.yaml`` with Ray's real
  autoscaler (``LocalAutoscalingCluster``; ``python -m rayjobs.local_cluster``).
"""
