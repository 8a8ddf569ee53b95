"""The official `openai` client against the real server, unchanged: embeddings (its default
base64 encoding), completions, and a streamed chat answer from a LoRA adapter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import openai
import pytest
from tests.e2e.conftest import Server

from constellation.testing.toy_lm import save_random_adapter, save_random_lm


@pytest.fixture(scope="module")
def models_ready(server: Server, minilm_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Server:
    root = tmp_path_factory.mktemp("models")
    base = save_random_lm(root / "tiny-qwen", "qwen2", seed=1)
    adapter = save_random_adapter(base, root / "tiny-qwen-haiku", rank=4, seed=2)
    server.cli("contributors", "add", "lab", "--name", "Lab")
    server.cli("models", "add", str(minilm_path), "--name", "mini", "--task", "embedding", "--author", "lab")
    server.cli(
        "models",
        "add",
        str(base),
        "--name",
        "tiny-qwen",
        "--task",
        "causal-lm",
        "--author",
        "lab",
        "--license",
        "apache-2.0",
    )
    server.cli(
        "adapters",
        "add",
        str(adapter),
        "--name",
        "haiku",
        "--base",
        "tiny-qwen",
        "--author",
        "lab",
        "--license",
        "mit",
    )
    return server


def client(server: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=server.key, max_retries=0)


def test_embeddings_with_default_base64(models_ready: Server, minilm_path: Path) -> None:
    from sentence_transformers import SentenceTransformer

    texts = ["a red bicycle", "quarterly revenue grew"]
    got = np.array(
        [d.embedding for d in client(models_ready).embeddings.create(model="mini", input=texts).data]
    )
    want = SentenceTransformer(str(minilm_path), device="cpu").encode(texts)
    assert np.abs(got - want).max() <= 1e-5


def test_streamed_chat_from_adapter_equals_non_streamed(models_ready: Server) -> None:
    c = client(models_ready)
    messages = [{"role": "user", "content": "write about the sea"}]
    full = c.chat.completions.create(model="haiku", messages=messages, max_tokens=10, temperature=0)  # type: ignore[arg-type]
    stream = c.chat.completions.create(
        model="haiku",
        messages=messages,
        max_tokens=10,
        temperature=0,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    parts, usage = [], None
    for chunk in stream:
        parts.extend(ch.delta.content or "" for ch in chunk.choices)
        usage = chunk.usage or usage
    assert "".join(parts) == full.choices[0].message.content
    assert usage is not None and full.usage is not None
    assert usage.completion_tokens == full.usage.completion_tokens


def test_completions_and_errors(models_ready: Server) -> None:
    c = client(models_ready)
    out = c.completions.create(model="tiny-qwen", prompt="hello", max_tokens=5, temperature=0)
    assert out.usage is not None and out.usage.completion_tokens <= 5
    with pytest.raises(openai.BadRequestError, match="/v1/embeddings"):
        c.chat.completions.create(model="mini", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.NotFoundError):
        c.embeddings.create(model="nope", input="x")


WORKFLOW = """
inputs: {message: string}
steps:
  - {name: vector, embed: {model: mini, input: "{{ inputs.message }}"}}
  - name: reply
    chat:
      model: haiku
      messages: [{role: user, content: "{{ inputs.message }}"}]
      max_tokens: 10
      temperature: 0
"""


def test_a_workflow_streams_through_the_official_client(models_ready: Server, tmp_path: Path) -> None:
    """Registered with the CLI, listed as a workflow, its last step's tokens streamed."""
    doc = tmp_path / "wf.yaml"
    doc.write_text(WORKFLOW)
    out = models_ready.cli("workflows", "add", str(doc), "--name", "sea-reply", "--author", "lab", "--json")
    assert '"version": 1' in out
    assert "sea-reply" in models_ready.cli("workflows", "list")
    c = client(models_ready)
    listed = {m.id: m for m in c.models.list().data}
    assert listed["sea-reply"].model_extra["constellation"]["kind"] == "workflow"  # type: ignore[index]
    messages = [{"role": "user", "content": "write about the sea"}]
    full = c.chat.completions.create(model="sea-reply", messages=messages)  # type: ignore[arg-type]
    stream = c.chat.completions.create(model="sea-reply", messages=messages, stream=True)  # type: ignore[arg-type]
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content and len(chunks) > 2
    ext = chunks[-1].model_extra["constellation"]  # type: ignore[index]
    assert [s["step"] for s in ext["steps"]] == ["vector", "reply"] and ext["price_nanos"] > 0
