"""`Upstream` against httpx's mock transport: retries only where safe, Retry-After honoured,
statuses mapped to 502/503/504 with codes naming the upstream's status, the breaker, the key
read at call time and redacted from anything the upstream echoes."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from constellation.errors import UpstreamError
from constellation.providers.call import Target, complete, open_stream
from constellation.providers.client import Upstream, UpstreamConfig
from constellation.providers.pool import Upstreams
from constellation.providers.secrets import SecretSource

pytestmark = pytest.mark.anyio
ANSWER = {
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}}],
    "usage": {"prompt_tokens": 2, "completion_tokens": 1},
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _upstream(handler: httpx.MockTransport, **cfg: object) -> Upstream:
    config = UpstreamConfig(name="up", base_url="http://up/v1", api_key_env="UP_KEY", **cfg)  # type: ignore[arg-type]
    return Upstream(config, SecretSource(), transport=handler)


async def test_5xx_is_retried_then_reported_with_the_upstream_status(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", "k1")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        return httpx.Response(503, json={"error": {"message": "down"}}, headers={"retry-after": "0"})

    up = _upstream(httpx.MockTransport(handler), max_retries=2)
    with pytest.raises(UpstreamError) as err:
        await up.post("chat/completions", b"{}")
    assert (err.value.status, err.value.code, err.value.retry_after_s) == (503, "upstream_status_503", 1)
    assert seen == ["Bearer k1"] * 3


async def test_a_client_error_is_not_retried_and_a_quoted_key_is_redacted(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UP_KEY", "sk-secret-123")
    calls = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(400, json={"error": {"message": "bad key sk-secret-123 for this"}})

    with pytest.raises(UpstreamError) as err:
        await _upstream(httpx.MockTransport(handler)).post("x", b"{}")
    assert calls == 1 and err.value.status == 502 and err.value.code == "upstream_status_400"
    assert "sk-secret-123" not in err.value.message and "[redacted]" in err.value.message


async def test_a_missing_key_fails_before_anything_is_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UP_KEY", raising=False)

    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing may be sent without the key")

    with pytest.raises(UpstreamError) as err:
        await _upstream(httpx.MockTransport(handler)).post("x", b"{}")
    assert err.value.code == "upstream_key_missing" and err.value.status == 503


async def test_connection_failures_open_the_circuit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", "k")

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    up = _upstream(httpx.MockTransport(handler), max_retries=0)
    for _ in range(5):
        with pytest.raises(UpstreamError) as err:
            await up.post("x", b"{}")
        assert err.value.code == "upstream_unreachable"
    with pytest.raises(UpstreamError) as err:
        await up.post("x", b"{}")
    assert err.value.code == "upstream_circuit_open" and err.value.status == 503


async def test_a_retry_after_longer_than_the_deadline_is_passed_on(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", "k")
    transport = httpx.MockTransport(lambda r: httpx.Response(429, headers={"retry-after": "120"}))
    with pytest.raises(UpstreamError) as err:
        await _upstream(transport, timeout_s=5.0).post("x", b"{}")
    assert err.value.code == "upstream_status_429" and err.value.retry_after_s == 120


async def test_the_concurrency_cap_queues_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", "k")
    live = peak = 0

    async def handler(request: httpx.Request) -> httpx.Response:
        nonlocal live, peak
        live += 1
        peak = max(peak, live)
        await asyncio.sleep(0.01)
        live -= 1
        return httpx.Response(200, json=ANSWER)

    up = _upstream(httpx.MockTransport(handler), max_concurrency=3)
    await asyncio.gather(*(up.post("x", b"{}") for _ in range(12)))
    assert peak == 3


async def test_answers_are_rewritten_to_our_name_and_streams_must_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("UP_KEY", "k")

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["stream"]:
            assert body["stream_options"] == {"include_usage": True}
            chunk = {"choices": [{"index": 0, "delta": {"content": "a"}}], "model": "gpt-x"}
            return httpx.Response(200, content=f"data: {json.dumps(chunk)}\n\n".encode())  # no [DONE]
        return httpx.Response(200, json={**ANSWER, "model": "gpt-x", "constellation": {"price_nanos": 1}})

    pool = Upstreams(transport=httpx.MockTransport(handler))
    cfg = UpstreamConfig(name="up", base_url="http://up/v1", api_key_env="UP_KEY")
    target = Target(model="ours", upstream_model="gpt-x", config=cfg)
    answer = await complete(pool, target, "chat", {"messages": [{"role": "user", "content": "x"}]})
    assert answer.body["model"] == "ours" and "constellation" not in answer.body
    assert (answer.usage.input_tokens, answer.usage.output_tokens, answer.usage.estimated) == (2, 1, False)
    async with open_stream(pool, target, "chat", {"messages": []}) as relay:
        got = []
        with pytest.raises(UpstreamError) as err:
            async for chunk in relay.chunks():
                got.append(chunk)
    assert err.value.code == "upstream_stream_cut" and got[0]["model"] == "ours"
    assert relay.usage().estimated and relay.usage().output_tokens == 1
    await pool.aclose()


async def test_after_the_reset_one_trial_closes_the_circuit_again(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UP_KEY", "k")
    healthy = False

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=ANSWER) if healthy else httpx.Response(500)

    up = _upstream(httpx.MockTransport(handler), max_retries=4)
    up.breaker.reset_s = 0.05
    with pytest.raises(UpstreamError) as err:
        await up.post("x", b"{}")
    assert err.value.code == "upstream_status_500"  # the breaker opened under the retries
    assert up.breaker.state == "open"
    healthy = True
    await asyncio.sleep(0.06)
    assert json.loads(await up.post("x", b"{}"))["usage"]["prompt_tokens"] == 2
    assert up.breaker.state == "closed"
