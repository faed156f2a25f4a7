"""``python -m streamvlm.synth make --seconds N --out x.mp4``."""

import sys

from .cli import main

sys.exit(main())
