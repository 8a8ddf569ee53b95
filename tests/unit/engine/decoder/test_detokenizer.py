"""Incremental detokenisation equals decoding the whole output at once, token by token, for
tokenizers of each kind: byte-level BPE (characters split across tokens), word-level, WordPiece
with space clean-up; through `DecodeStream`, the offset-window fallback, and (for a decode that
cleans up spaces afterwards, which no window reproduces) the whole output each time."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer

from constellation.engine.decoder.detokenizer import IncrementalDecoder, TextStream
from constellation.engine.decoder.tokens import LMTokenizer
from constellation.testing.toy_lm import save_random_lm

TRICKY = (
    "Hello,  world! héllo 🙂👍🏽 naïve café — 東京 and spaces   end. "
    "Don't stop: ok?! 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \t tab\nnew line 🧑‍🚀"
)


class Window:
    """A tokenizer seen only through `decode`: forces the offset-window fallback."""

    def __init__(self, tok: LMTokenizer) -> None:
        self.tok = tok

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tok.decode(ids, skip_special_tokens=skip_special_tokens)


@pytest.fixture(scope="module")
def byte_level(tmp_path_factory: pytest.TempPathFactory) -> LMTokenizer:
    path = save_random_lm(tmp_path_factory.mktemp("bl") / "lm", "llama", seed=0, byte_level=True)
    return LMTokenizer.load(path)


@pytest.fixture(scope="module")
def word_level(tmp_path_factory: pytest.TempPathFactory) -> LMTokenizer:
    return LMTokenizer.load(save_random_lm(tmp_path_factory.mktemp("wl") / "lm", "llama", seed=0))


def _pieces(tokenizer: object, ids: list[int]) -> list[str]:
    dec = IncrementalDecoder(tokenizer)  # type: ignore[arg-type]
    seen: list[int] = []
    out = []
    for i in ids:
        seen.append(i)
        out.append(dec.step(seen))
    out.append(dec.finish(seen))
    return out


def _ids(tok: LMTokenizer, text: str) -> list[int]:
    ids = list(tok.tokenizer(text, add_special_tokens=False)["input_ids"])
    specials = tok.tokenizer.convert_tokens_to_ids(["<s>", "</s>"])
    return [*ids[:7], specials[0], *ids[7:20], specials[1], *ids[20:]]  # specials are skipped


@pytest.mark.parametrize("via", ["stream", "window"])
def test_byte_level_pieces_equal_the_full_decode(byte_level: LMTokenizer, via: str) -> None:
    ids = _ids(byte_level, TRICKY)
    tok = byte_level if via == "stream" else Window(byte_level)
    if via == "stream":
        assert IncrementalDecoder(byte_level)._stream is not None
    pieces = _pieces(tok, ids)
    assert "".join(pieces) == byte_level.decode(ids) == TRICKY
    assert not any("\ufffd" in p for p in pieces)  # a split character waits for its last byte


@pytest.mark.parametrize("via", ["stream", "window"])
def test_word_level_pieces_equal_the_full_decode(word_level: LMTokenizer, via: str) -> None:
    text = "the cat sat on the mat and the dog ran"
    ids = _ids(word_level, text)
    pieces = _pieces(word_level if via == "stream" else Window(word_level), ids)
    assert "".join(pieces) == word_level.decode(ids)


@pytest.mark.parametrize("cleanup", [False, True], ids=["stream", "whole"])
def test_wordpiece_pieces_equal_the_full_decode(minilm_path: Path, cleanup: bool) -> None:
    hf = AutoTokenizer.from_pretrained(str(minilm_path), clean_up_tokenization_spaces=cleanup)
    tok = LMTokenizer(hf, None, frozenset())  # type: ignore[arg-type]
    # A decode that cleans up spaces around punctuation afterwards has no DecodeStream twin.
    assert (IncrementalDecoder(tok)._stream is None) == cleanup
    # (Clean-up can remove a space already streamed -- "don '" then "don't" -- as it always could.)
    text = "naïve café 東京 [SEP] end" if cleanup else "Don't stop , ok ? naïve café 東京 [SEP] end ."
    ids = list(hf(text, add_special_tokens=True)["input_ids"])
    assert "".join(_pieces(tok, ids)) == tok.decode(ids)


def test_an_unfinished_character_at_the_end_is_flushed_as_the_full_decode_has_it(
    byte_level: LMTokenizer,
) -> None:
    ids = list(byte_level.tokenizer("ok 🙂", add_special_tokens=False)["input_ids"])[:-1]  # no last byte
    for tok in (byte_level, Window(byte_level)):
        ts = TextStream(tok, ())
        text = "".join(ts.push([i])[0] for i in ids) + ts.flush()
        assert text == byte_level.decode(ids) and text.endswith("\ufffd")


def test_stop_strings_still_hold_back_over_incremental_text(byte_level: LMTokenizer) -> None:
    ts = TextStream(byte_level, ("🙂👍",))
    out, hit = "", False
    for i in _ids(byte_level, "say 🙂 then 🙂👍 more")[:-1]:
        piece, hit = ts.push([i])
        out += piece
        if hit:
            break
    assert hit and out == "say 🙂 then "
