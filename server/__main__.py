"""`python -m server ...` is the same program as the `lpu` console script."""

import sys

from server.cli import main

sys.exit(main())
