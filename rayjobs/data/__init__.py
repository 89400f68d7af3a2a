"""The data plane of a Ray run: where datasets live, how they are prepared, and how workers read them.

- :mod:`~rayjobs.data.storage` -- one URL (local path, ``file://``, ``s3://``, ``gs://``) to a pyarrow filesystem,
  with retries, atomic writes and one-line errors (``resolve``, ``read_json``, ``write_bytes``, ``upload_dir``,
  ``ray_storage`` for Ray Train / Tune checkpoints, ``StorageError``, ``DatasetError``).
- :mod:`~rayjobs.data.manifest` -- a prepared dataset's manifest and shards (``Manifest``, ``read_manifest``,
  ``verify_dataset``, ``dataset_state``).
- :mod:`~rayjobs.data.prepare` -- a twohead dataset cut into Parquet shards (``prepare``; ``python -m rayjobs.prepare``).
- :mod:`~rayjobs.data.labels` -- per-sample cluster ids of the class-division head (paper Eq. 3) beside the shards
  (``ensure_labels``, ``load_lookup``; ``python -m rayjobs.labels``).
- :mod:`~rayjobs.data.stream` -- Ray Data streaming of the shards into workers (``train_dataset``,
  ``RayBatchSource``) and the eval splits of a Ray run.
- :mod:`~rayjobs.data.plane` -- what Ray Train workers and Tune trials read: the dataset checked once, labels
  computed once per key (``plan_dataset``, ``start_service``, ``worker_inputs``).
"""
