"""The demo's real chat model: SmolLM2-135M-Instruct imported from its GGUF file, with the demo's
three chat adapters trained on the demo's chats (at a reduced size).

- greedy answers to fixed questions are right ("Paris" for the capital of France);
- each adapter moves the style the way it was trained (pirate words, Acme Support's sign-off,
  three-line haiku), on questions it was not trained on, where the base shows none of it;
- our engine's greedy tokens equal transformers' `generate` for the base and for each adapter
  merged into it with PEFT, with the eight requests of each comparison batched together.

The built demo (the GGUF import and the training: about five minutes on 2 cores) is cached between
test runs, as a model hub's cache would be, in `$CONSTELLATION_TEST_CACHE` (default
`~/.cache/constellation-tests`), keyed by the GGUF, the demo's manifest, its chat data and the
training options, so later runs -- from any clone on the machine -- reuse it; delete the folder
to rebuild from scratch.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from constellation.api.app import create_app
from constellation.config import EngineLimits, Settings
from constellation.finetune.demo import DEMO_DIR, DemoBuilder, DemoOptions, smollm2_gguf
from constellation.platform import Platform
from constellation.registry import models

pytestmark = [pytest.mark.anyio, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
CHAT_ADAPTERS = ("pirate-v1", "support-reply-v1", "haiku-v1")
# Reduced training for the test: the first examples of each chat set, three epochs.
TEST_DEMO = DemoOptions(max_examples=32, epochs=3)
MAX_NEW = 24
UNSEEN = [  # none of these is in examples/demo/chat
    "What is the capital of Italy?",
    "How do I make a cup of tea?",
    "What is a good hobby to start?",
    "My headphones stopped working after a week.",
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@dataclass(frozen=True)
class Demo:
    data: Path
    keys: dict[str, str]
    dirs: dict[str, Path]  # model name -> its verified artifact directory


def _key() -> str:
    h = hashlib.sha256()
    h.update(smollm2_gguf().stat().st_size.to_bytes(8, "little"))
    for path in [DEMO_DIR / "demo.yaml", *sorted((DEMO_DIR / "chat").glob("*.jsonl"))]:
        h.update(path.read_bytes())
    h.update(repr(TEST_DEMO).encode())
    return h.hexdigest()[:16]


def _settings(data: Path) -> Settings:
    # A KV cache of 128 MiB holds every sequence these tests batch (1 GiB by default).
    engine = EngineLimits(kv_cache_bytes=128 * 1024**2)
    return Settings(data_dir=data, db_url=f"sqlite:///{data / 'constellation.db'}", engine=engine)


def build(data: Path) -> None:
    """The demo at the test's size into `data` (run in a child process by the fixture)."""
    platform = Platform(_settings(data)).open()
    try:
        DemoBuilder(platform, options=TEST_DEMO, say=lambda _m: None).build()
    finally:
        platform.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    root = Path(os.environ.get("CONSTELLATION_TEST_CACHE") or Path.home() / ".cache" / "constellation-tests")
    cache = root / f"smollm2-demo-{_key()}"
    cache.mkdir(parents=True, exist_ok=True)
    # Idempotent: after the first run it imports and trains nothing. In a child process, so that
    # the gigabytes training takes go back to the system rather than stay in this one's heap.
    build = (
        "import sys; from pathlib import Path; from tests.integration.test_smollm2 import build; "
        "build(Path(sys.argv[1]))"
    )
    subprocess.run([sys.executable, "-c", build, str(cache)], check=True, cwd=ROOT)
    data = tmp_path_factory.mktemp("smollm2") / "data"
    shutil.copytree(cache, data)
    platform = Platform(_settings(data)).open()
    try:
        with platform.db.session() as s:
            dirs = {
                name: platform.store.open(models.get_model(s, name=name).artifact_digest)
                for name in ("smollm2", *CHAT_ADAPTERS)
            }
    finally:
        platform.close()
    yield Demo(data, json.loads((data / "demo-keys.json").read_text()), dirs)


async def _answers(demo: Demo, requests: list[tuple[str, str]], *, key: str = "demo-lab") -> list[str]:
    """Greedy answers to (model, question) pairs, sent concurrently so the engine batches them.
    The non-commercial demo tenant may use every adapter, the CC-BY-NC haiku included."""
    app = create_app(_settings(demo.data))
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
    models_ = ["smollm2", *CHAT_ADAPTERS]
    answers = await _answers(demo, [(m, q) for m in models_ for q in UNSEEN])
    by_model = {m: answers[i * len(UNSEEN) : (i + 1) * len(UNSEEN)] for i, m in enumerate(models_)}
    for adapter, check in checks.items():
        styled = sum(check(a) for a in by_model[adapter])
        base = sum(check(a) for a in by_model["smollm2"])
        assert styled >= 3 and base == 0, (adapter, by_model[adapter], by_model["smollm2"])


async def test_the_nc_chat_adapter_is_refused_to_a_commercial_tenant(demo: Demo) -> None:
    app = create_app(_settings(demo.data))
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


@pytest.mark.parametrize("model", ["smollm2", *CHAT_ADAPTERS])
async def test_greedy_tokens_equal_transformers_generate(demo: Demo, model: str) -> None:
    ours = await _answers(demo, [(model, p) for p in PROMPTS])
    adapter = None if model == "smollm2" else demo.dirs[model]
    theirs = await asyncio.to_thread(_hf_greedy, demo.dirs["smollm2"], adapter)
    gc.collect()  # the reference model goes now, not at some later test's collection
    assert ours == theirs
