"""``python -m hf_prospector``: the command line (also what ``torchrun``/``accelerate launch -m`` start)."""

import sys

from .cli import main

sys.exit(main())
