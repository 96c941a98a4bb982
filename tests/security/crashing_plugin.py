"""A plugin with a bug: it raises TypeError on a ``crashy`` document holding ``boom``, as a real
plugin did on ``{"roles": [["referral"]]}``. Loaded into app servers by ``AFFINITY_PLUGINS``."""

from __future__ import annotations

from affinity import hookimpl
from affinity.models import SharedSettings


@hookimpl
def affinity_check_settings(settings: SharedSettings) -> None:
    if settings.name == "crashy" and "boom" in settings.value:
        raise TypeError("unhashable type: 'list'")
