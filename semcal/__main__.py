from semcal.cli.cli import main

raise SystemExit(main())
