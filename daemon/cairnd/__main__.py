from cairnd.cli import main

raise SystemExit(main())
