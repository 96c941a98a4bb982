"""Property-based requests over the referral's ``/openapi.json`` (schemathesis 4): no answer is a
5xx, and every answer conforms to the spec (status, content type, headers, body), with the admin
token and without it, for valid and for invalid input.

The examples per operation are bounded (:data:`MAX_EXAMPLES`) so that the run stays within a
minute or two, and the long poll of ``GET /v1/settings`` is kept from waiting.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.generation import GenerationMode

from affinity.testing import Deployment, wait_until

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    with Deployment(tmp_path_factory.mktemp("fuzz") / "d") as d:
        d.start_referral()
        d.start_server("s1")
        wait_until(lambda: d.assignable() == {"s1"}, 10, what="s1 assignable")
        yield d


@pytest.fixture(scope="module")
def http(fleet: Deployment) -> Iterator[requests.Session]:
    with requests.Session() as session:
        session.trust_env = False  # REQUESTS_CA_BUNDLE would replace the deployment's CA
        session.verify = str(fleet.ca)
        yield session


@pytest.fixture(scope="module")
def spec(fleet: Deployment, http: requests.Session) -> schemathesis.BaseSchema:
    document = http.get(fleet.referral_url + "/openapi.json", timeout=5).json()
    loaded = schemathesis.openapi.from_dict(document)
    loaded.config.update(base_url=fleet.referral_url, tls_verify=str(fleet.ca))
    return loaded


def _fuzz(
    spec: schemathesis.BaseSchema,
    http: requests.Session,
    headers: dict[str, str],
    mode: GenerationMode,
) -> None:
    failures: list[str] = []
    for result in spec.get_all_operations():
        operation = result.ok()

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case) -> None:
            if case.query and "wait" in case.query:
                case.query["wait"] = 0  # a blocking query would hold the run for a minute
            response = case.call(session=http, headers=headers, timeout=10, allow_redirects=False)
            case.validate_response(response, checks=CHECKS, headers=headers)

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid: an operation without any input
            assert mode is GenerationMode.NEGATIVE, operation.label
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, then fail
            failures.append(f"{operation.label}: {exc}")
    assert not failures, "\n\n".join(failures)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_with_the_admin_token(
    spec: schemathesis.BaseSchema, http: requests.Session, fleet: Deployment, mode: GenerationMode
) -> None:
    _fuzz(spec, http, {"Authorization": f"Bearer {fleet.admin_token}"}, mode)


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_without_a_token(
    spec: schemathesis.BaseSchema, http: requests.Session, mode: GenerationMode
) -> None:
    _fuzz(spec, http, {}, mode)
