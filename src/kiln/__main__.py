"""`python -m kiln ...` (and `torchrun ... -m kiln train ...`) is the `kiln` command."""

from kiln.cli import main

if __name__ == "__main__":
    main()
