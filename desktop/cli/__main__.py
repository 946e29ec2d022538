"""``python -m desktop.cli``: the ``tokentrace`` command."""

import sys

from desktop.cli import main

sys.exit(main())
