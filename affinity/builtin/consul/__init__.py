"""The Consul registry backend: app servers register with their local agent, referrals watch it.

Modules, from the ground up: :mod:`.options` (the ``[registry.options]`` table,
validated without python-consul2), :mod:`.blocking` (the blocking-query loop:
index rules, jittered waits, rate limit, back-off), :mod:`.catalog` (Consul
entries and KV documents to affinity's models), :mod:`.client` (the only
module that imports python-consul2, with a pooled aiohttp adapter),
:mod:`.registry` (the referral's side) and :mod:`.registrar` (the app
server's side). The plugin hooks live in :mod:`affinity.builtin.consul.plugin`,
which imports this package only when ``registry.backend = "consul"``.
"""

from __future__ import annotations
