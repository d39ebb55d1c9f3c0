"""Property-based tests of `kiln serve` from its own OpenAPI schema (schemathesis): whatever a
client sends, valid by the schema or not (negative mode), the answer is never a 5xx.

schemathesis's pytest plugin does not run under this pytest, so each operation's strategy is
driven by hypothesis directly; the checks are schemathesis's own."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="pip install -e '.[dev]'")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from kiln.deploy.serve import create_app  # noqa: E402
from kiln.infer import load_servable  # noqa: E402

TOKEN = {"Authorization": "Bearer t0ken"}


@pytest.fixture(scope="module")
def operations(trained_run: Path) -> dict:
    app = create_app(load_servable(trained_run), token="t0ken")
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, headers=TOKEN)
    operations = (result.ok() for result in schema.get_all_operations())
    return {(op.method.upper(), op.path): op for op in operations}


def test_schema_lists_the_routes(operations: dict):
    assert set(operations) == {
        ("GET", "/health"), ("GET", "/metadata"), ("POST", "/predict"), ("POST", "/explain")
    }  # fmt: skip


@pytest.mark.parametrize(
    ("route", "mode"),
    [
        (("GET", "/health"), GenerationMode.POSITIVE),
        (("GET", "/metadata"), GenerationMode.POSITIVE),
        (("POST", "/predict"), GenerationMode.POSITIVE),
        (("POST", "/predict"), GenerationMode.NEGATIVE),  # the GETs take no input to get wrong
        (("POST", "/explain"), GenerationMode.POSITIVE),
        (("POST", "/explain"), GenerationMode.NEGATIVE),
    ],
)
def test_no_server_errors(operations: dict, route, mode):
    statuses: Counter = Counter()

    @given(case=operations[route].as_strategy(generation_mode=mode))
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case):
        response = case.call(headers=TOKEN)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=[not_a_server_error])

    check()
    assert sum(statuses.values()) > 0
    if route == ("POST", "/predict") and mode == GenerationMode.POSITIVE:
        assert statuses[400] > 0, statuses  # random bytes are refused as images, cleanly
