"""``python -m iodict_log`` runs the iodict-log command."""

import sys

from .cli import main

sys.exit(main())
