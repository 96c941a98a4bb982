"""``python -m affinity``."""

from __future__ import annotations

import sys

from affinity.cli.main import main

sys.exit(main())
