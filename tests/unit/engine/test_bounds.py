"""Inputs are bounded before they are tokenised whole: characters per item (a 400 naming the item,
or with truncate a cut to what the model's max tokens can span), tokens per request (checked
chunk by chunk), and the heap is trimmed once a large batch is done."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import pytest

from constellation.config import EngineLimits
from constellation.engine import bounds
from constellation.engine.bounds import CHARS_PER_TOKEN, check_items, cut_for_tokens
from constellation.engine.encoder import memory
from constellation.engine.encoder.engine import EncoderEngine
from constellation.engine.encoder.memory import MemoryTrimmer
from constellation.engine.encoder.model import EncoderModel
from constellation.errors import InvalidInput

from .conftest import base_spec

HUGE = "serving many small models " * 400_000  # 10.4 MB


class _Recorder:
    """The Rust tokenizer, recording how many characters each call was given."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.seen = inner, []  # type: ignore[var-annotated]

    def encode(self, text: str, **kw: Any) -> Any:
        self.seen.append(len(text))
        return self.inner.encode(text, **kw)

    def encode_batch(self, texts: list[str], **kw: Any) -> Any:
        self.seen.extend(len(t) for t in texts)
        return self.inner.encode_batch(texts, **kw)


@pytest.fixture(scope="module")
def model(tiny_bert: Path) -> EncoderModel:
    return EncoderModel(base_spec(tiny_bert), EngineLimits())


def test_truncate_cuts_the_text_before_tokenising_it(
    model: EncoderModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    recorder = _Recorder(model._fast)
    monkeypatch.setattr(model, "_fast", recorder)
    ids = model.tokenize([HUGE], truncate=True)
    assert recorder.seen and max(recorder.seen) <= model.max_length * CHARS_PER_TOKEN  # not 10 MB
    # The same tokens as tokenising it whole and truncating, as the tokenizer itself does.
    want = model.tokenizer([HUGE[:20_000]], truncation=True, max_length=model.max_length)["input_ids"]
    assert ids == want and len(ids[0]) == model.max_length == 64


def test_engine_bounds_a_huge_item_before_tokenising(tiny_bert: Path) -> None:
    engine = EncoderEngine(EngineLimits(max_chars_per_item=1000))
    base = base_spec(tiny_bert)
    try:
        res = asyncio.run(engine.embed(base, None, ["short", HUGE], truncate=True))
        assert res.tokens == [3, 64]  # billed for the tokens processed
        with pytest.raises(InvalidInput, match=r"input\[1\] has 10400000 characters .* at most 1000") as exc:
            asyncio.run(engine.embed(base, None, ["short", HUGE]))
        assert exc.value.param == "input"
    finally:
        engine.close()


def test_tokens_per_request_are_refused_chunk_by_chunk(
    tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bounds, "CHUNK_CHARS", 100)
    model = EncoderModel(base_spec(tiny_bert), EngineLimits(max_tokens_per_request=100))
    recorder = _Recorder(model._fast)
    monkeypatch.setattr(model, "_fast", recorder)
    texts = ["one two three four five six seven eight nine ten"] * 200  # 12 tokens each
    with pytest.raises(InvalidInput, match="at most 100 tokens per request") as exc:
        model.tokenize(texts, truncate=False)
    assert exc.value.param == "input"
    assert len(recorder.seen) < 20  # stopped after the chunk that passed the limit, not 200 items
    assert len(model.tokenize(texts[:8], truncate=False)) == 8  # 96 tokens: within the limit


def test_check_items() -> None:
    limits = EngineLimits(max_items_per_request=3, max_chars_per_item=10)
    assert check_items(["a" * 10], limits, truncate=False) == ["a" * 10]
    assert check_items(["a" * 50, "b"], limits, truncate=True) == ["a" * 10, "b"]
    for texts, match in [([], "empty"), (["a"] * 4, "at most 3"), (["a", ""], r"input\[1\] is empty"),
                         (["a", "b" * 11], r"input\[1\] has 11 characters")]:  # fmt: skip
        with pytest.raises(InvalidInput, match=match):
            check_items(texts, limits, truncate=False)


def test_cut_for_tokens_keeps_words_whole() -> None:
    assert cut_for_tokens("short text", 4) == "short text"
    words = "abcdefg " * 100
    cut = cut_for_tokens(words, 4)
    assert len(cut) <= 4 * CHARS_PER_TOKEN and words.startswith(cut) and cut.endswith("abcdefg")
    solid = "x" * 1000
    assert cut_for_tokens(solid, 4) == "x" * 4 * CHARS_PER_TOKEN  # nowhere to cut between words


# -- giving memory back ----------------------------------------------------------------------


def test_trimmer_trims_once_idle_after_a_large_batch() -> None:
    calls: list[int] = []
    trimmer = MemoryTrimmer(1000, trim=lambda: calls.append(1))
    trimmer.processed(600, idle=True)
    trimmer.processed(600, idle=False)  # busy: never on the hot path
    assert calls == []
    trimmer.processed(10, idle=True)
    assert calls == [1] and trimmer.trims == 1
    trimmer.processed(10, idle=True)  # the count starts again
    assert calls == [1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_libc_trim_is_found_on_linux() -> None:
    trim = memory._libc_trim()
    assert trim is not None
    trim()


def test_encoder_trims_after_a_large_batch(tiny_bert: Path) -> None:
    engine = EncoderEngine(EngineLimits(trim_after_tokens=50))
    try:
        asyncio.run(engine.embed(base_spec(tiny_bert), None, ["a few words here"] * 20))
    finally:
        engine.close()  # joins the batcher's thread, which trims after delivering
    assert engine.stats()["memory_trims"] == 1
