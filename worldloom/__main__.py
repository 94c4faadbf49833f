"""``python -m worldloom``: the command line (see :mod:`worldloom.cli`)."""

import sys

from worldloom.cli import main

sys.exit(main())
