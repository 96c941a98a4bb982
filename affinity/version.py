"""The version of affinity: one place, read by the package, the build, the metrics and the API."""

from __future__ import annotations

__version__ = "0.1.0"
