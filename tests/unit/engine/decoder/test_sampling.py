"""Sampling rules row by row, parameter validation, and stop-string-safe streaming text."""

from __future__ import annotations

import pytest
import torch

from constellation.engine.decoder.detokenizer import TextStream
from constellation.engine.decoder.sampling import SamplingParams, make_generator, sample
from constellation.errors import InvalidInput


def _logits(rows: int = 4, vocab: int = 50) -> torch.Tensor:
    return torch.randn(rows, vocab, generator=torch.Generator().manual_seed(0))


def test_greedy_and_top_k_1_are_argmax() -> None:
    logits = _logits()
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(top_k=1),
        SamplingParams(temperature=0.0),
        SamplingParams(top_k=1),
    ]
    out = sample(logits, params, [make_generator(i) for i in range(4)])
    assert out.tolist() == logits.argmax(-1).tolist()


def test_top_p_keeps_only_the_nucleus() -> None:
    logits = torch.tensor([[5.0, 4.9, -5.0, -5.0, -5.0]])
    picks = {int(sample(logits, [SamplingParams(top_p=0.5)], [make_generator(s)])[0]) for s in range(40)}
    assert picks <= {0, 1}


def test_a_row_depends_only_on_its_own_generator() -> None:
    logits = _logits()
    p = SamplingParams(temperature=1.0, seed=5)
    alone = sample(logits[2:3], [p], [make_generator(5)])
    batch = sample(
        logits, [SamplingParams()] * 2 + [p, SamplingParams()], [make_generator(i) for i in (1, 2, 5, 3)]
    )
    assert int(batch[2]) == int(alone[0])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -1.0},
        {"temperature": 3.0},
        {"top_p": 0.0},
        {"top_k": -1},
        {"stop": ("",)},
    ],
)
def test_invalid_params_are_refused(kwargs) -> None:
    with pytest.raises(InvalidInput):
        SamplingParams(**kwargs)


class CharTokenizer:
    """Token i decodes to chr(i); enough to drive TextStream."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def _stream(text: str, stop: tuple[str, ...]) -> tuple[list[str], bool]:
    ts = TextStream(CharTokenizer(), stop)
    chunks = []
    for ch in text:
        out, hit = ts.push([ord(ch)])
        chunks.append(out)
        if hit:
            return chunks, True
    chunks.append(ts.flush())
    return chunks, False


def test_stop_prefix_is_held_back_then_released() -> None:
    chunks, hit = _stream("abcEnXdEND", ("END",))
    assert hit
    assert "".join(chunks) == "abcEnXd"
    assert all("E" not in c or c.startswith("En") for c in chunks)


def test_no_stop_emits_everything() -> None:
    chunks, hit = _stream("hello world", ("xyz", "wor!"))
    assert not hit
    assert "".join(chunks) == "hello world"


def test_earliest_of_several_stops_wins() -> None:
    chunks, hit = _stream("one two three", ("three", "two"))
    assert hit and "".join(chunks) == "one "
