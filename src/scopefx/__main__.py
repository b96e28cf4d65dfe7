"""``python -m scopefx``: the same as the ``scopefx`` command."""

import sys

from .cli import main

sys.exit(main())
