from wsss.cli import main

raise SystemExit(main())
