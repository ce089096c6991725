"""``python -m bench``: the side-by-side performance table."""

import sys

from bench.run import main

sys.exit(main())
