"""``python -m child_trainer`` (the trainer image's entry point, the Job's command): the same click
command as ``epnas train`` (``child_trainer.cli.train``)."""

import sys

from child_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main())
