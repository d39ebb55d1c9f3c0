"""`python -m kiln ...` (and `torchrun ... -m kiln train ...`) is the `kiln` command."""

import sys

from kiln.cli import main

if __name__ == "__main__":
    sys.exit(main())  # the exit code matters: torchrun reads each rank's
