"""Hyper-parameter search on Ray Tune, recorded in an Optuna study (``python -m rayjobs.search``).

- :mod:`~rayjobs.search.driver` -- the search from start to report: check, record, study, Tune, report
  (``run_search``, ``main``).
- The space: :mod:`~rayjobs.search.space` (a YAML search space parsed and validated: ``load_search_space``,
  ``SearchSpec``), :mod:`~rayjobs.search.space_schema` (its document shape), :mod:`~rayjobs.search.space_params`
  (parameters resolved against the training config), :mod:`~rayjobs.search.objectives` (what a trial is scored on).
- Running it: :mod:`~rayjobs.search.tuning` (the Tuner, resources, restore), :mod:`~rayjobs.search.trial` (one
  trial around :func:`twohead.loop.fit`), :mod:`~rayjobs.search.searcher` (Optuna ask/tell behind Tune's
  ``Searcher``), :mod:`~rayjobs.search.study` (the study and the search record), :mod:`~rayjobs.search.seeding`
  (reference configuration, warm starts), :mod:`~rayjobs.search.lock` (one driver per folder and study),
  :mod:`~rayjobs.search.tune_state` (a snapshot checked before a resume), :mod:`~rayjobs.search.tracking`
  (MLflow and TensorBoard).
- After it: :mod:`~rayjobs.search.report` (``write_report``; ``python -m rayjobs.report``),
  :mod:`~rayjobs.search.report_plots`, :mod:`~rayjobs.search.pareto` (Pareto front and choices),
  :mod:`~rayjobs.search.retrain` (``--retrain-best``).

The search-space presets ship as :mod:`rayjobs.search_spaces` (the repository's ``search_spaces/``).
"""
