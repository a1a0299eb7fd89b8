"""``python -m pyskim``: the ``pyskim`` command line."""
import sys

from .apps.cli import main

sys.exit(main())
