from bcrdist.cli import main

raise SystemExit(main())
