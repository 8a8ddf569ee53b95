"""A gigantic prompt is refused before it is tokenised (it would only be refused after, by the
context check, once the tokenizer had spent its time and memory on all of it)."""

from __future__ import annotations

import pytest

from constellation.engine.decoder.sampling import SamplingParams
from constellation.errors import InvalidInput

PARAMS = SamplingParams(max_tokens=4, temperature=0.0)


def test_gigantic_prompt_or_chat_is_refused_before_tokenising(families, limits_engine, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    engine = limits_engine(max_chars_per_item=1000)
    fam = families["llama"]
    assert engine.prepare(fam.base, None, prompt="x" * 1000, params=PARAMS).prompt_ids  # at the limit

    def no_tokenizer(base):  # type: ignore[no-untyped-def]
        raise AssertionError("tokenised a prompt over the limit")

    monkeypatch.setattr(engine, "tokenizer", no_tokenizer)
    with pytest.raises(InvalidInput, match="prompt has 1001 characters but at most 1000") as exc:
        engine.prepare(fam.base, None, prompt="x" * 1001, params=PARAMS)
    assert exc.value.param == "prompt"
    chat = [{"role": "system", "content": "s" * 600}, {"role": "user", "content": "u" * 600}]
    with pytest.raises(InvalidInput, match="messages has 1200 characters") as exc:
        engine.prepare(fam.base, None, messages=chat, params=PARAMS)
    assert exc.value.param == "messages"
