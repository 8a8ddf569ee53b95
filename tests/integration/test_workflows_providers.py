"""A workflow step on a provider model (issue #18's item 5): a cascade that escalates to the
closed model when the cheaper one's answer fails its check, through the real server and the
fault-injecting upstream; the provider's leg is in the run's split."""

from __future__ import annotations

from tests.integration.test_providers_api import PRICE_OUT, Proxy, proxy, upstream  # noqa: F401
from tests.integration.upstream_fake import WORDS

DOC = """
inputs: {question: string}
steps:
  - name: answer
    cascade:
      - chat: {model: cheap, messages: [{role: user, content: "{{ inputs.question }}"}], max_tokens: 20}
        accept: "output.text | length > 1000"
      - chat: {model: closed, messages: [{role: user, content: "{{ inputs.question }}"}], max_tokens: 20}
"""


def test_a_cascade_escalates_to_the_closed_model_and_pays_its_provider(proxy: Proxy) -> None:  # noqa: F811
    proxy.add_provider()
    assert proxy.expose("ok", "cheap").status_code == 201
    assert proxy.expose("ok", "closed", price_per_1k_output=PRICE_OUT).status_code == 201
    proxy.http.post("/api/contributors", headers=proxy.admin, json={"id": "d", "name": "D", "kind": "person"})
    r = proxy.http.post(
        "/api/workflows", headers=proxy.admin, json={"name": "ask", "document": DOC, "author": "d"}
    )
    assert r.status_code == 201, r.text
    h = proxy.key("acme")
    r = proxy.http.post(
        "/v1/chat/completions",
        headers=h,
        json={"model": "ask", "messages": [{"role": "user", "content": "hello"}]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["choices"][0]["message"]["content"] == "".join(WORDS)
    ext = body["constellation"]
    assert [(s["step"], s["model"]) for s in ext["steps"]] == [
        ("answer[0]", "cheap"),
        ("answer[1]", "closed"),
    ]
    provider = [leg for s in ext["steps"] for leg in s["split"] if leg["role"] == "provider"]
    assert provider and all(leg["artifact"] == "closed" for leg in provider)
    assert sum(leg["amount_nanos"] for leg in ext["split"]) == ext["price_nanos"]
