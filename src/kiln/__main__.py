"""`python -m kiln ...` (and `torchrun ... -m kiln train ...`) is the `kiln` command."""

from kiln.cli import main
from kiln.cli.exit import exit_now
from kiln.process import mark_command

if __name__ == "__main__":
    mark_command()
    exit_now(main())  # the exit code matters: torchrun reads each rank's
