"""``python -m wsss``: the command line (:mod:`wsss.cli`)."""

from wsss.cli import main

raise SystemExit(main())
