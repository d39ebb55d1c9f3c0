"""`python -m kiln.cli ...` is the `kiln` command."""

from kiln.cli import main
from kiln.cli.exit import exit_now

if __name__ == "__main__":
    exit_now(main())
