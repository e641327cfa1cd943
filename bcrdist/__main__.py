from bcrdist.cli.main import main

raise SystemExit(main())
