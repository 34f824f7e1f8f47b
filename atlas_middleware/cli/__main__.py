"""``python -m atlas_middleware.cli``: the same as the ``atlas`` command."""

import sys

from atlas_middleware.cli import main

if __name__ == "__main__":
    sys.exit(main())
