"""``python -m streamvlm``: the same as the ``streamvlm`` command."""

import sys

from .cli import main

sys.exit(main())
