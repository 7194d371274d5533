"""`python -m cairnd`: the command line (cairnd.cli)."""

from cairnd.cli import main

raise SystemExit(main())
