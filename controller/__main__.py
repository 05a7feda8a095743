"""``python -m controller`` (the controller image's entry point): the same click command as
``epnas controller`` (``controller.main.controller``)."""

import sys

from controller.main import main

sys.exit(main())
