"""``python -m pyskim``: the ``pyskim`` command line."""
import sys

from .cli import main

sys.exit(main())
