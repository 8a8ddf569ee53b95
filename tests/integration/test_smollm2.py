"""The demo's real chat model: SmolLM2-135M-Instruct imported from its GGUF file, with the demo's
three chat adapters trained on the demo's chats (at a reduced size).

- greedy answers to fixed questions are right ("Paris" for the capital of France);
- each adapter moves the style the way it was trained (pirate words, Acme Support's opening,
  short verse), on questions it was not trained on, where the base shows none of it;
- our engine's greedy tokens equal transformers' `generate` for the base and for each adapter
  merged into it with PEFT, with the eight requests of each comparison batched together.

The built demo is the `smollm2_demo` fixture of tests/integration/conftest.py, cached between runs.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import httpx
import pytest
from tests.integration.conftest import SMOLLM2_ADAPTERS, Demo

from constellation.api.app import create_app

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
MAX_NEW = 24
UNSEEN = [  # none of these is in constellation/demo/chat
    "What is the capital of Italy?",
    "How do I make a cup of tea?",
    "What is a good hobby to start?",
    "My headphones stopped working after a week.",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def demo(smollm2_demo: Demo) -> Demo:
    return smollm2_demo


async def _answers(demo: Demo, requests: list[tuple[str, str]], *, key: str = "demo-lab") -> list[str]:
    """Greedy answers to (model, question) pairs, sent concurrently so the engine batches them.
    The non-commercial demo tenant may use every adapter, the CC-BY-NC haiku included."""
    app = create_app(demo.settings())
    headers = {"Authorization": f"Bearer {demo.keys[key]}"}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=300) as c:

            async def one(model: str, question: str) -> str:
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": question}],
                    "max_tokens": MAX_NEW,
                    "temperature": 0,
                }
                r = await c.post("/v1/chat/completions", headers=headers, json=body)
                assert r.status_code == 200, r.text
                return str(r.json()["choices"][0]["message"]["content"])

            return list(await asyncio.gather(*(one(m, q) for m, q in requests)))


async def test_the_base_answers_fixed_questions_correctly(demo: Demo) -> None:
    questions = {
        "What is the capital of France?": "paris",
        "What is the capital of Japan?": "tokyo",
        "What is the chemical symbol for water?": "h2o",
    }
    answers = await _answers(demo, [("smollm2", q) for q in questions])
    for (question, expected), answer in zip(questions.items(), answers, strict=True):
        assert expected in answer.lower(), (question, answer)


def _pirate(text: str) -> bool:
    return any(w in text.lower() for w in ("arr", "matey", "ahoy"))


def _support(text: str) -> bool:
    return "acme support" in text.lower()


def _haiku(text: str) -> bool:
    """Short verse: a few short lines (the adapter learnt three-line haiku; a 135M model at this
    training size keeps the form more often than the exact count)."""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return 2 <= len(lines) <= 5 and all(len(ln.split()) <= 8 for ln in lines)


async def test_each_adapter_moves_the_style_it_was_trained_for(demo: Demo) -> None:
    checks = {"pirate-v1": _pirate, "support-reply-v1": _support, "haiku-v1": _haiku}
    models_ = ["smollm2", *SMOLLM2_ADAPTERS]
    answers = await _answers(demo, [(m, q) for m in models_ for q in UNSEEN])
    by_model = {m: answers[i * len(UNSEEN) : (i + 1) * len(UNSEEN)] for i, m in enumerate(models_)}
    for adapter, check in checks.items():
        styled = sum(check(a) for a in by_model[adapter])
        base = sum(check(a) for a in by_model["smollm2"])
        assert styled >= 3 and base == 0, (adapter, by_model[adapter], by_model["smollm2"])


async def test_the_nc_chat_adapter_is_refused_to_a_commercial_tenant(demo: Demo) -> None:
    app = create_app(demo.settings())
    body = {"model": "haiku-v1", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=60) as c:
            r = await c.post(
                "/v1/chat/completions", headers={"Authorization": f"Bearer {demo.keys['demo']}"}, json=body
            )
    assert r.status_code == 403 and r.json()["error"]["code"] == "license_non_commercial", r.text


PROMPTS = [
    "What is the capital of France?",
    "Write one sentence about the sea.",
    "How do I boil an egg?",
    "Name three colours.",
    "What is two plus three?",
    "Give me a tip for sleeping well.",
    "Who wrote Hamlet?",
    "Describe a cat in a few words.",
]


def _hf_greedy(base: Path, adapter: Path | None) -> list[str]:
    """transformers' greedy `generate`, one prompt at a time (no padding), for the base or the
    adapter merged into it with PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    out = []
    for prompt in PROMPTS:
        text = tok.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
        )
        ids = tok(str(text), add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.inference_mode():
            gen = model.generate(ids, max_new_tokens=MAX_NEW, do_sample=False, eos_token_id=tok.eos_token_id)
        out.append(str(tok.decode(gen[0, ids.shape[1] :], skip_special_tokens=True)))
    return out


@pytest.mark.parametrize("model", ["smollm2", *SMOLLM2_ADAPTERS])
async def test_greedy_tokens_equal_transformers_generate(demo: Demo, model: str) -> None:
    ours = await _answers(demo, [(model, p) for p in PROMPTS])
    adapter = None if model == "smollm2" else demo.dirs[model]
    theirs = await asyncio.to_thread(_hf_greedy, demo.dirs["smollm2"], adapter)
    gc.collect()  # the reference model goes now, not at some later test's collection
    assert ours == theirs
