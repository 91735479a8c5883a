"""``python -m scripts.cli``: the same as the ``dctrl`` console script (supervisord's programs run it)."""

import sys

from scripts.cli import main

sys.exit(main())
