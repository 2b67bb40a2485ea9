"""`python -m fedcc` runs the command line."""

import sys

from fedcc.cli import main

sys.exit(main())
