"""Structured outputs: what constrained decoding costs and what it buys. The same 32 concurrent
requests with and without a JSON schema (tokens/s), the grammar compile per schema (cold and
cached), and the fraction of answers that parse and validate, with and without the constraint,
on the same prompts (which describe the schema in words either way).

Full size runs the demo's real chat model (SmolLM2-135M-Instruct, imported from its GGUF);
--tiny a tiny random Llama with a byte-level tokenizer (numbers mean little there)."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from constellation.config import EngineLimits
from constellation.engine.decoder.engine import DecoderEngine
from constellation.engine.decoder.sampling import SamplingParams
from constellation.engine.decoder.sequence import Prepared
from constellation.engine.decoder.structured import Constraint, GrammarCompiler
from constellation.engine.spec import BaseSpec
from constellation.testing.toy_lm import save_random_lm

SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 32},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "address": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 24}, "country": {"type": "string"}},
                "required": ["city", "country"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "age", "address"],
        "additionalProperties": False,
    },
    "sentiment": {
        "type": "object",
        "properties": {
            "label": {"enum": ["positive", "negative", "neutral"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["label", "confidence"],
        "additionalProperties": False,
    },
    "shopping": {
        "type": "object",
        "properties": {
            "items": {
                "type": "array",
                "minItems": 1,
                "maxItems": 5,
                "items": {
                    "type": "object",
                    "properties": {"name": {"type": "string"}, "qty": {"type": "integer", "minimum": 1}},
                    "required": ["name", "qty"],
                    "additionalProperties": False,
                },
            }
        },
        "required": ["items"],
        "additionalProperties": False,
    },
    "event": {
        "type": "object",
        "properties": {
            "title": {"type": "string"},
            "day": {"enum": ["mon", "tue", "wed", "thu", "fri", "sat", "sun"]},
            "attendees": {"type": "array", "items": {"type": "string"}, "maxItems": 6},
            "online": {"type": "boolean"},
        },
        "required": ["title", "day", "attendees", "online"],
        "additionalProperties": False,
    },
}
TASKS = {
    "person": ["Maria, 31, a nurse from Lisbon", "an invented person", "Tom, a retired pilot in Oslo"],
    "sentiment": ["'I love this phone!'", "'The food was cold.'", "'It arrived on Tuesday.'"],
    "shopping": ["eggs, two loaves of bread and milk", "what pancakes need", "a picnic for four"],
    "event": ["a team lunch on Friday with Ana and Bo", "an online book club", "a Monday stand-up"],
}


@dataclass(frozen=True, slots=True)
class Sizes:
    requests: int
    max_tokens: int


FULL = Sizes(requests=32, max_tokens=64)
TINY = Sizes(requests=8, max_tokens=24)


def prompts(n: int, *, state_schema: bool = True) -> list[tuple[str, str]]:
    """(schema name, prompt) pairs cycling over the schemas; the prompt states the schema (not
    at tiny size, where the model cannot read and every byte of a prompt is a token)."""
    cases = [(name, task) for name, tasks in TASKS.items() for task in tasks]
    out = []
    for i in range(n):
        name, task = cases[i % len(cases)]
        schema = json.dumps(SCHEMAS[name]) if state_schema else name
        out.append(
            (name, f"Answer with only a JSON object matching this schema: {schema}\nThe input: {task}")
        )
    return out


@contextmanager
def model_dir(tiny: bool) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        if tiny:
            yield save_random_lm(Path(tmp) / "tiny", "llama", seed=3, byte_level=True, ctx=2048)
            return
        from constellation.artifacts.gguf import converted
        from constellation.finetune.demo import smollm2_gguf

        with converted(smollm2_gguf(), Path(tmp)) as (path, _):
            yield path


async def _texts(engine: DecoderEngine, work: list[Prepared]) -> tuple[list[str], int]:
    async def one(p: Prepared) -> tuple[str, int]:
        parts, n = [], 0
        async for d in engine.generate(p):
            parts.append(d.text)
            n += len(d.token_ids)
        return "".join(parts), n

    done = await asyncio.gather(*(one(p) for p in work))
    return [t for t, _ in done], sum(n for _, n in done)


def run(engine: DecoderEngine, work: list[Prepared]) -> tuple[float, int, list[str]]:
    """All requests at once: tokens/s, tokens and the answers."""
    t0 = time.perf_counter()
    texts, tokens = asyncio.run(_texts(engine, work))
    return tokens / (time.perf_counter() - t0), tokens, texts


def valid(text: str, schema: dict[str, Any]) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
    except (ValueError, jsonschema.ValidationError):
        return False
    return True


def compile_times(engine: DecoderEngine, base: BaseSpec) -> list[tuple[str, float, float]]:
    """(schema, cold ms, cached µs): a fresh compiler per schema, then the same schema again."""
    tok = engine.tokenizer(base)
    out = []
    for name, schema in SCHEMAS.items():
        compiler = GrammarCompiler(tok.tokenizer, tok.config.vocab_size, tok.eos_ids)
        c = Constraint.json_schema(schema, "response_format")
        cold = _time(lambda: compiler.compile(c))  # noqa: B023
        cached = statistics.median(_time(lambda: compiler.compile(c)) for _ in range(20))  # noqa: B023
        out.append((name, cold * 1e3, cached * 1e6))
    return out


def _time(f: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def main(tiny: bool = False) -> None:
    s = TINY if tiny else FULL
    with model_dir(tiny) as path:
        base = BaseSpec("base", "causal-lm", resolve=lambda: path)
        engine = DecoderEngine(EngineLimits(max_decode_seqs=s.requests, kv_cache_bytes=1 << 30))
        cases = prompts(s.requests, state_schema=not tiny)
        params = [SamplingParams(max_tokens=s.max_tokens, temperature=0.7, seed=i) for i in range(s.requests)]

        def prepare(i: int, constrained: bool) -> Prepared:
            name, text = cases[i]
            c = Constraint.json_schema(SCHEMAS[name], "response_format") if constrained else None
            return engine.prepare(
                base, None, messages=[{"role": "user", "content": text}], params=params[i], constraint=c
            )

        compiles = compile_times(engine, base)
        free = [prepare(i, False) for i in range(s.requests)]
        held = [prepare(i, True) for i in range(s.requests)]
        run(engine, free[:2])  # warm-up: the model loaded, the kernels seen once
        free_tps, free_n, free_texts = run(engine, free)
        held_tps, held_n, held_texts = run(engine, held)
        engine.close()
    ok_free = sum(valid(t, SCHEMAS[n]) for t, (n, _) in zip(free_texts, cases, strict=True))
    ok_held = sum(valid(t, SCHEMAS[n]) for t, (n, _) in zip(held_texts, cases, strict=True))
    model = "tiny random llama (byte-level)" if tiny else "SmolLM2-135M-Instruct (fp32, from its GGUF)"
    print(
        f"structured bench: {model}, {s.requests} concurrent chat requests over {len(SCHEMAS)} schemas, "
        f"max_tokens {s.max_tokens}, temperature 0.7 seeded; grammar engine llguidance"
    )
    rows = [
        ("tok/s unconstrained", f"{free_tps:.1f}", f"{free_n} tokens"),
        (
            "tok/s constrained (json_schema)",
            f"{held_tps:.1f}",
            f"{held_tps / free_tps:.2f}x unconstrained; {held_n} tokens",
        ),
        ("valid answers unconstrained", f"{ok_free}/{s.requests}", f"{ok_free / s.requests:.0%}"),
        ("valid answers constrained", f"{ok_held}/{s.requests}", f"{ok_held / s.requests:.0%}"),
    ]
    rows += [
        (f"compile {name}", f"{cold:.2f} ms cold", f"{cached:.1f} us cached")
        for name, cold, cached in compiles
    ]
    for name, value, note in rows:
        print(f"  {name:<34} {value:>16}  {note}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tiny", action="store_true", help="tiny sizes (CI smoke run, a few seconds)")
    main(tiny=parser.parse_args().tiny)
