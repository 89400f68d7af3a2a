"""``python -m rayjobs.report``: a search's report, rebuilt from its folder or bucket (:mod:`rayjobs.search.report`)."""

from rayjobs.search.report import main

if __name__ == "__main__":
    raise SystemExit(main())
