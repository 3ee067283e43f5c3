from transferkit.cli.main import main

raise SystemExit(main())
