"""``python -m ensemblekit``."""

import sys

from ensemblekit.cli import main

sys.exit(main())
