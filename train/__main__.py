"""``python -m opensora_train ...`` (also ``accelerate launch -m opensora_train ...``)."""

import sys

from .cli import main

sys.exit(main())
