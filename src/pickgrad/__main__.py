"""``python -m pickgrad``: the ``pickgrad`` command (also what ``torchrun -m pickgrad`` runs)."""

import sys

from pickgrad.cli import main

if __name__ == "__main__":
    sys.exit(main())
