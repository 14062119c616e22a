"""Entry point: python -m benchmarks run [options]."""

import sys

from .cli import main

sys.exit(main())
