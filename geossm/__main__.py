from geossm.cli import main

raise SystemExit(main())
