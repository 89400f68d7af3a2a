from rayjobs.reproduce.cli import main

raise SystemExit(main())
