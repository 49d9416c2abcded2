"""`python -m callbot.phone ...`: the softphone without the rest of the CLI."""

from callbot.phone.cli import main

raise SystemExit(main())
