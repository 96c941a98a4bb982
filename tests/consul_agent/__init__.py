"""A stand-in for the Consul agent HTTP API, holding exactly what affinity's Consul backend uses.

Why: no Consul binary can be installed on the build machines, yet the backend
(``affinity/builtin/consul/``) must meet something that behaves like an agent:
checks that start critical and really probe a URL, blocking reads that wake on
a change and time out with jitter, an index that can go backwards, KV
check-and-set, ACL denials. ``tests/consul/test_conformance.py`` pins each of
those behaviours and runs against a real agent too (``AFFINITY_TEST_CONSUL``).

What it serves (https://developer.hashicorp.com/consul/api-docs):

* ``PUT /v1/agent/service/register`` (one HTTP check), ``.../deregister/<id>``,
  ``.../maintenance/<id>``; ``GET /v1/agent/service/<id>`` (or a 404 page with
  ``StandInConfig.agent_service_endpoint = False``), ``GET /v1/agent/services``;
* ``GET /v1/health/service/<name>``, ``/v1/catalog/services`` — blocking;
* ``GET`` (single key or ``?recurse``, blocking), ``PUT`` (``?cas``, ``?flags``)
  and ``DELETE`` (``?recurse``) on ``/v1/kv/<key>``;
* ACLs when ``StandInConfig.acl_tokens`` is set: the ``X-Consul-Token`` header.

Simplifications against a real agent: one node and one datacenter; one index
for every read (Consul keeps finer ones, per service or KV prefix, so blocking
reads here wake more often, which Consul's contract allows); only HTTP checks;
no ``?passing``, ``?tag``, ``?filter`` or other parameter the backend does not
send (refused with 400, never silently ignored); output-only check changes never
reach the catalog (Consul defers them by 5 minutes); nothing is persisted, so a
restart is that of a ``-dev`` agent; ACLs know valid tokens and the anonymous
one, no policies.

Modules: :mod:`.state` (records, the index, check runners, KV), :mod:`.probe`
(one HTTP check run), :mod:`.decode` (request bodies), :mod:`.api` (the
endpoints), :mod:`.server` (serving from a thread; outages, restarts, freezes).
"""

from __future__ import annotations

from tests.consul_agent.server import AgentStandIn
from tests.consul_agent.state import StandInConfig

__all__ = ["AgentStandIn", "StandInConfig"]
