# `python -m deformconv.train ...`: runs the CLI (see deformconv.train.cli).
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
