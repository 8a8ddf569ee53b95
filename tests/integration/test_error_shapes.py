"""Errors the fuzzer met that read badly: a body that is not JSON names no field."""

from __future__ import annotations

import pytest
from tests.integration.conftest import Api

pytestmark = pytest.mark.anyio


async def test_a_body_that_is_not_json_says_so_without_a_param(api: Api) -> None:
    headers = {**api.key("acme"), "Content-Type": "application/json"}
    r = await api.client.post("/v1/embeddings", headers=headers, content=b'{"model": "x", ')
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["param"] is None  # was "15", the byte offset
    assert "not valid JSON" in err["message"] and "byte 15" in err["message"]
