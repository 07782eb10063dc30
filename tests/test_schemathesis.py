"""Property-based requests generated from the server's own OpenAPI schema: never a 5xx."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.servers import RunningServer, run_server


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    workdir = tmp_path_factory.mktemp("schemathesis")
    with run_server(
        workdir, f"sqlite:///{workdir / 'ota.db'}", env={"OTAKIT_ALLOW_ANONYMOUS_UPLOAD": "true"}
    ) as srv:
        yield srv


def test_no_server_errors(sqlite_server: RunningServer) -> None:
    schema = schemathesis.openapi.from_url(f"{sqlite_server.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 5
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            response = case.call(base_url=sqlite_server.url, timeout=30)
            case.validate_response(response, checks=(not_a_server_error,))
            assert response.status_code != 422, "parameter errors are 400, never 422"
            content_type = response.headers.get("content-type") or [""]
            if content_type[0].startswith("application/json") and response.content:
                assert response.json().get("status") == response.status_code

        check()
