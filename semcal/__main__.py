from semcal.cli import main

raise SystemExit(main())
