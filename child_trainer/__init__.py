"""The EPNAS child trainer: one architecture in, one trained and measured child out.

The same entry point runs as a local subprocess and as a Kubernetes Job:
``python -m child_trainer --arch URI --out URI`` (``child_trainer.cli.main``).
"""

from child_trainer.cli import main

__all__ = ["main"]
