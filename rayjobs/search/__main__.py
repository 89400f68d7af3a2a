"""``python -m rayjobs.search``: :func:`rayjobs.search.driver.main`."""

from rayjobs.search.driver import main

raise SystemExit(main())
