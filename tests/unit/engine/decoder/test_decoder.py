"""Greedy decoding equals HF `generate` with the PEFT adapter merged, for every family and mix;
batch invariance of seeded sampling; stop strings and streaming; bad input."""

from __future__ import annotations

import asyncio
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from constellation.artifacts.peft import check_adapter_fits_base
from constellation.config import EngineLimits
from constellation.engine.decoder.engine import DecoderEngine
from constellation.engine.decoder.sampling import SamplingParams
from constellation.engine.decoder.sequence import Delta
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import InvalidInput
from constellation.testing.toy_lm import save_random_adapter

PROMPTS = ("the cat sat", "hello dog and bird run fast and swim", "red", "a big old tree by the river")
MIXES = ("identical", "distinct", "uniform", "skewed")
GREEDY = SamplingParams(max_tokens=12, temperature=0.0)


@cache
def _reference_model(base: Path, adapter: Path | None) -> Any:
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter)).merge_and_unload()
    return model.eval()


def reference(base: BaseSpec, adapter: AdapterSpec | None, prompt_ids: tuple[int, ...], n: int) -> list[int]:
    model = _reference_model(base.resolve(), adapter.resolve() if adapter else None)
    ids = torch.tensor([prompt_ids])  # [1, S]
    out = model.generate(ids, max_new_tokens=n, do_sample=False, pad_token_id=1, eos_token_id=3)
    return out[0, len(prompt_ids) :].tolist()


def assign(mix: str, adapters: tuple[AdapterSpec, ...], n: int) -> list[AdapterSpec | None]:
    """Which adapter each of `n` requests uses (None = the base alone)."""
    if mix == "identical":
        return [adapters[0] for _ in range(n)]
    if mix == "distinct":
        return [*adapters, None][:n]
    if mix == "uniform":
        return [adapters[i % len(adapters)] for i in range(n)]
    return [*(adapters[0] for _ in range(n - 1)), adapters[1]]  # skewed


@pytest.mark.parametrize("mix", MIXES)
@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "gpt2"])
def test_greedy_equals_merged_peft(family: str, mix: str, families, engine: DecoderEngine, run_all) -> None:
    fam = families[family]
    chosen = assign(mix, fam.adapters, 2 * len(PROMPTS))
    prepared = [
        engine.prepare(fam.base, a, prompt=PROMPTS[i % len(PROMPTS)], params=GREEDY)
        for i, a in enumerate(chosen)
    ]
    answers = run_all(engine, prepared)
    for p, ans in zip(prepared, answers, strict=True):
        assert ans.tokens == reference(fam.base, p.adapter, p.prompt_ids, p.max_new)


def test_adapters_change_the_output(families, engine: DecoderEngine, run_all) -> None:
    """Guards the test above against adapters that do nothing."""
    fam = families["llama"]
    prepared = [engine.prepare(fam.base, a, prompt=PROMPTS[1], params=GREEDY) for a in (None, *fam.adapters)]
    outputs = {tuple(a.tokens) for a in run_all(engine, prepared)}
    assert len(outputs) > 1


def _seeded(seed: int) -> SamplingParams:
    return SamplingParams(max_tokens=16, temperature=0.9, top_p=0.9, top_k=30, seed=seed)


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_seeded_request_is_batch_invariant(family: str, families, engine: DecoderEngine, run_all) -> None:
    fam = families[family]
    probe = engine.prepare(fam.base, fam.adapters[1], prompt=PROMPTS[3], params=_seeded(1234))
    alone = run_all(engine, [probe])[0]
    others = [
        engine.prepare(fam.base, fam.adapters[i % 3] if i % 4 else None, prompt=PROMPTS[i % 4], params=p)
        for i, p in enumerate(
            [_seeded(7), GREEDY, SamplingParams(max_tokens=20, temperature=1.0), _seeded(99)] * 3
        )
    ]
    busy = run_all(engine, [*others[:5], probe, *others[5:]])
    assert busy[5].tokens == alone.tokens
    assert busy[5].text == alone.text


def test_stop_string_is_cut_and_never_streamed(families, engine: DecoderEngine, run_all) -> None:
    fam = families["llama"]
    params = SamplingParams(max_tokens=12, temperature=0.0)
    full = run_all(engine, [engine.prepare(fam.base, fam.adapters[0], prompt=PROMPTS[0], params=params)])[0]
    words = full.text.split()
    stop = " ".join(words[2:4])  # spans two tokens, so it arrives split across steps
    params = SamplingParams(max_tokens=12, temperature=0.0, stop=("zzz-never", stop))
    cut = run_all(engine, [engine.prepare(fam.base, fam.adapters[0], prompt=PROMPTS[0], params=params)])[0]
    assert cut.final.finish_reason == "stop"
    assert cut.text == full.text[: full.text.index(stop)]
    assert all(stop not in c for c in cut.chunks)


def test_stream_concatenation_and_usage(families, engine: DecoderEngine, run_all) -> None:
    fam = families["gpt2"]
    p = engine.prepare(fam.base, fam.adapters[2], prompt=PROMPTS[1], params=GREEDY)
    ans = run_all(engine, [p])[0]
    tok = engine.tokenizer(fam.base)
    assert ans.text == tok.decode(ans.tokens)
    assert ans.final.completion_tokens == len(ans.tokens)
    assert ans.final.prompt_tokens == len(p.prompt_ids)
    assert ans.final.finish_reason == "length"
    assert ans.final.compute_ns is not None and ans.final.compute_ns > 0


def test_every_piece_carries_the_compute_so_far_and_the_first_its_queue_time(
    families, engine: DecoderEngine
) -> None:
    """What a dropped stream is billed for, and the queue-time histogram of /metrics."""
    fam = families["gpt2"]
    p = engine.prepare(fam.base, None, prompt=PROMPTS[1], params=GREEDY)

    async def go() -> list[Delta]:
        return [d async for d in engine.generate(p)]

    pieces = asyncio.run(go())
    computed = [d.compute_ns or 0 for d in pieces]
    assert computed[0] > 0 and computed == sorted(computed)  # a running total
    assert pieces[0].queue_ns is not None and pieces[0].queue_ns >= 0
    assert all(d.queue_ns is None for d in pieces[1:])


def test_chat_uses_the_template(families, engine: DecoderEngine) -> None:
    fam = families["qwen2"]
    msgs = [{"role": "system", "content": "be good"}, {"role": "user", "content": "hello cat"}]
    p = engine.prepare(fam.base, None, messages=msgs, params=GREEDY)
    tok = engine.tokenizer(fam.base).tokenizer
    assert list(p.prompt_ids) == tok("<|system|> be good <|user|> hello cat <|assistant|>")["input_ids"]


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"prompt": "cat " * 200}, ["200", "128"]),
        ({"prompt": "cat " * 100, "params": SamplingParams(max_tokens=50)}, ["max_tokens=50", "at most 28"]),
        ({"messages": []}, ["empty"]),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, ["wizard", "user"]),
        ({"prompt": ""}, ["empty"]),
    ],
)
def test_bad_input_says_what_to_change(kwargs, words, families, engine: DecoderEngine) -> None:
    kwargs = {"params": GREEDY, **kwargs}
    with pytest.raises(InvalidInput) as err:
        engine.prepare(families["llama"].base, None, **kwargs)
    assert all(w in err.value.message for w in words)


def test_non_causal_base_is_refused(families, engine: DecoderEngine) -> None:
    path = families["llama"].path
    emb = BaseSpec("minilm", "embedding", resolve=lambda: path)
    with pytest.raises(InvalidInput, match="embeddings"):
        engine.prepare(emb, None, prompt="hi", params=GREEDY)


def test_rank_32_adapter_imports_and_serves_like_merged_peft(
    families, tmp_path_factory: pytest.TempPathFactory, limits_engine, run_all
) -> None:
    """Above the rank the LoRA slots start at: they grow to it; above the setting, import refuses."""
    fam = families["llama"]
    out = save_random_adapter(
        fam.path, tmp_path_factory.mktemp("r32") / "llama-r32", rank=32, seed=7, std=0.05
    )
    limit = EngineLimits().max_lora_rank
    assert check_adapter_fits_base(out, fam.path, task="causal-lm", max_rank=limit) == []
    with pytest.raises(InvalidInput, match=r"rank 32 on 'model\.layers\.0\..*largest rank served \(16"):
        check_adapter_fits_base(out, fam.path, task="causal-lm", max_rank=16)
    engine = limits_engine()
    adapter = AdapterSpec("llama-r32", fam.name, resolve=lambda: out)
    prepared = [engine.prepare(fam.base, adapter, prompt=p, params=GREEDY) for p in PROMPTS]
    for p, ans in zip(prepared, run_all(engine, prepared), strict=True):
        assert ans.tokens == reference(fam.base, adapter, p.prompt_ids, p.max_new)


def test_an_adapter_on_a_module_the_decoder_does_not_wrap_is_refused_at_import(
    families, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from peft import LoraConfig, get_peft_model

    fam = families["llama"]
    model = AutoModelForCausalLM.from_pretrained(str(fam.path), dtype=torch.float32)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "lm_head"]))
    out = tmp_path_factory.mktemp("head")
    peft_model.save_pretrained(str(out / "lora-only"), save_embedding_layers=False)
    with pytest.raises(InvalidInput, match=r"adapts \['lm_head'\], which the causal-lm engine does not wrap"):
        check_adapter_fits_base(out / "lora-only", fam.path, task="causal-lm")
    peft_model.save_pretrained(str(out / "with-layers"))  # PEFT then keeps whole lm_head weights too
    with pytest.raises(InvalidInput, match=r"lm_head\.base_layer\.weight'.*not a LoRA factor"):
        check_adapter_fits_base(out / "with-layers", fam.path, task="causal-lm")
