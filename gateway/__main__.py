"""``python -m gateway`` is ``warehouse-gateway``."""

import sys

from gateway.cli import main

sys.exit(main())
