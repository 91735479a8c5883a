"""Kept at this path for supervisord configs already written: their programs start with
``python -m scripts.supervise child -- COMMAND``. The code is scripts/cli/supervise.py; this
module imports nothing heavier than it (it runs before every program's own start)."""

import sys

from scripts.cli.supervise import *  # noqa: F401,F403
from scripts.cli.supervise import child_main

if __name__ == "__main__":
    sys.exit(child_main(sys.argv[1:]))
