"""``python -m tests.consul_agent --port N``: the stand-in as a process of its own."""

from __future__ import annotations

import sys

from tests.consul_agent.server import main

sys.exit(main())
