"""``python -m sglrp ...``: the ``sglrp`` command (:func:`sglrp.cli.main`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
