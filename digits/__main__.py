"""`python -m digits score ...`, the same as the `digit-mlops` command."""

import sys

from digits.cli import main

if __name__ == "__main__":  # (a decoding process re-imports this module; it must not run)
    sys.exit(main())
