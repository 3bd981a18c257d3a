"""`python -m benchmarks [--only trials,aggregate,...]` (`make bench`)."""

import sys

from . import main

sys.exit(main())
