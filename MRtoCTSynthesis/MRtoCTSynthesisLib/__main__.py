"""``python -m MRtoCTSynthesisLib`` = the ``mrtoct`` command line."""

import sys

from .apps.cli import main

sys.exit(main())
