"""``python -m child_trainer``: see ``child_trainer.cli``."""

import sys

from child_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
