"""`python -m cairnd`: the command line (cairnd.cli)."""

from cairnd.cli.main import main

raise SystemExit(main())
