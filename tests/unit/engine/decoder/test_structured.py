"""Constrained decoding in the engine, on a tiny random Llama with a byte-level tokenizer (its
free text is noise, so every valid answer is the constraint's doing): masks touch only their
own rows, constrained / unconstrained / differently-constrained rows and adapters share a batch
without changing each other's seeded answers, grammars are cached within a bound."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import torch

from constellation.engine.decoder.engine import DecoderEngine
from constellation.engine.decoder.sampling import SamplingParams
from constellation.engine.decoder.sequence import Prepared
from constellation.engine.decoder.structured import Constraint, GrammarCompiler, mask_logits
from constellation.engine.spec import AdapterSpec, BaseSpec
from constellation.errors import InvalidInput
from constellation.testing.toy_lm import save_random_adapter, save_random_lm

ENUM = {
    "type": "object",
    "properties": {"mood": {"enum": ["calm", "angry"]}, "n": {"type": "integer", "minimum": 1, "maximum": 5}},
    "required": ["mood", "n"],
    "additionalProperties": False,
}
LIST = {"type": "array", "items": {"type": "boolean"}, "minItems": 1, "maxItems": 3}
NESTED = {
    "type": "object",
    "properties": {
        "a": {
            "type": "object",
            "properties": {"b": {"enum": [1, 2, 3]}},
            "required": ["b"],
            "additionalProperties": False,
        }
    },
    "required": ["a"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory) -> tuple[BaseSpec, AdapterSpec]:
    root = tmp_path_factory.mktemp("structured")
    path = save_random_lm(root / "bytes", "llama", seed=7, byte_level=True, ctx=256)
    adir = save_random_adapter(path, root / "bytes-a", rank=4, seed=8)
    return BaseSpec("bytes", "causal-lm", resolve=lambda: path), AdapterSpec(
        "bytes-a", "bytes", resolve=lambda: adir
    )


def _prep(
    engine: DecoderEngine, lm: tuple[BaseSpec, AdapterSpec], schema: Any, seed: int, *, adapter: bool = False
) -> Prepared:
    base, a = lm
    c = Constraint.json_schema(schema, "response_format") if schema is not None else None
    params = SamplingParams(max_tokens=40, temperature=0.9, seed=seed)
    return engine.prepare(base, a if adapter else None, prompt="hello", params=params, constraint=c)


def test_masks_touch_only_their_own_rows(engine: DecoderEngine, lm: tuple[BaseSpec, AdapterSpec]) -> None:
    g = engine.grammars(lm[0]).compile(Constraint.json_schema(ENUM, "response_format"))
    logits = torch.randn(3, engine.grammars(lm[0]).vocab_size)
    out = mask_logits(logits, [None, g.matcher(), None])
    assert torch.equal(out[0], logits[0]) and torch.equal(out[2], logits[2])
    allowed = out[1].isfinite().nonzero().flatten().tolist()
    tok = engine.tokenizer(lm[0])
    assert [tok.decode([t]) for t in allowed] == ["{"]  # compact JSON: an object opens first
    assert mask_logits(logits, [None, None, None]) is logits


def test_mixed_batch_answers_validate_and_equal_their_answers_alone(
    engine: DecoderEngine, lm: tuple[BaseSpec, AdapterSpec], run_all: Callable[..., list[Any]]
) -> None:
    specs = [(ENUM, False), (None, False), (LIST, True), (NESTED, False), (None, True), (ENUM, True)]
    batch = [_prep(engine, lm, s, seed=i, adapter=a) for i, (s, a) in enumerate(specs)]
    together = run_all(engine, batch)
    for (schema, _), answer in zip(specs, together, strict=True):
        if schema is not None:
            assert answer.final.finish_reason == "stop", answer.text
            jsonschema.validate(json.loads(answer.text), schema)
    alone = [run_all(engine, [p])[0] for p in batch[:3]]
    assert [a.tokens for a in alone] == [t.tokens for t in together[:3]]


def test_max_tokens_before_the_structure_closes_is_length(
    engine: DecoderEngine, lm: tuple[BaseSpec, AdapterSpec], run_all: Callable[..., list[Any]]
) -> None:
    base, _ = lm
    c = Constraint.json_schema(ENUM, "response_format")
    p = engine.prepare(
        base, None, prompt="hi", params=SamplingParams(max_tokens=4, temperature=0), constraint=c
    )
    (answer,) = run_all(engine, [p])
    assert answer.final.finish_reason == "length" and len(answer.tokens) == 4
    assert '{"mood":'.startswith(answer.text)  # one byte per token: the first four


def test_grammar_cache_is_bounded_and_counts(engine: DecoderEngine, lm: tuple[BaseSpec, AdapterSpec]) -> None:
    tok = engine.tokenizer(lm[0])
    compiler = GrammarCompiler(tok.tokenizer, tok.config.vocab_size, tok.eos_ids, capacity=2)
    a, b, c = (Constraint.json_schema(s, "x") for s in (ENUM, LIST, NESTED))
    first = compiler.compile(a)
    assert compiler.compile(a) is first and (compiler.hits, compiler.misses) == (1, 1)
    compiler.compile(b)
    compiler.compile(c)  # evicts a, the least recently used
    assert len(compiler) == 2
    assert compiler.compile(a) is not first and compiler.misses == 4


@pytest.mark.parametrize(
    "schema", [{"type": "strin"}, {"$ref": "#/$defs/missing"}, {"type": "string", "pattern": "("}]
)
def test_an_uncompilable_schema_names_its_field(
    engine: DecoderEngine, lm: tuple[BaseSpec, AdapterSpec], schema: dict[str, Any]
) -> None:
    with pytest.raises(InvalidInput) as e:
        _prep(engine, lm, {"type": "object", "properties": {"x": schema}}, 0)
    assert e.value.param == "response_format"


def test_a_word_level_tokenizer_is_refused_by_name(engine: DecoderEngine, tmp_path: Path) -> None:
    path = save_random_lm(tmp_path / "words", "llama", seed=1)
    base = BaseSpec("words", "causal-lm", resolve=lambda: path)
    c = Constraint.json_schema(ENUM, "response_format")
    with pytest.raises(InvalidInput, match="tokenizer cannot be constrained"):
        engine.prepare(base, None, prompt="the cat", params=SamplingParams(max_tokens=2), constraint=c)
