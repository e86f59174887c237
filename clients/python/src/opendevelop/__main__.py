"""``python -m opendevelop``: the command line."""

import sys

from opendevelop.cli import main

sys.exit(main())
