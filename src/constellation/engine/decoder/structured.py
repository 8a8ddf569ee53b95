"""Constrained decoding: a JSON schema or Lark grammar compiled to a per-step token mask
(llguidance), so a constrained row can only sample tokens that keep its output in the grammar.

One `GrammarCompiler` per base compiles each grammar once into a bounded LRU cache; every
request gets a `Matcher` (a cheap copy of the compiled one) that the engine advances token by
token. `mask_logits` applies the masks of a step's constrained rows and leaves the other rows
untouched, so constrained, unconstrained and differently-constrained requests share a batch."""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from constellation.errors import InvalidInput

# A schema past this many bytes of JSON is refused (400): compile time and the grammar's memory
# grow with it, and every request with a new schema pays the compile on the caller's thread.
MAX_SCHEMA_BYTES = 32_768
# Counts a grammar unrolls (minItems, maxItems, ...): past this a schema is refused, as
# `{"minItems": 100000}` alone takes half a minute to compile.
MAX_REPEAT = 256
REPEAT_KEYS = ("minItems", "maxItems", "minProperties", "maxProperties", "minContains", "maxContains")
GRAMMAR_CACHE_SIZE = 256  # compiled grammars kept per base, least recently used out
# Separators without spaces: a small model left free to add whitespace may add it forever.
JSON_OPTIONS = {"whitespace_flexible": False}


@dataclass(frozen=True, slots=True)
class Constraint:
    """What an output must match: a JSON schema (as JSON text) or a Lark grammar (llguidance's
    dialect, which may embed `%json {schema}`). `param` is the request field to name in an error."""

    kind: Literal["json_schema", "lark"]
    source: str
    param: str = "response_format"

    @classmethod
    def json_schema(cls, schema: dict[str, Any], param: str) -> Constraint:
        text = json.dumps(schema, sort_keys=True, separators=(",", ":"))
        check_size(text, param)
        check_repeats(schema, param)
        return cls("json_schema", text, param)

    def grammar(self) -> str:
        """llguidance's grammar text for this constraint."""
        import llguidance

        if self.kind == "lark":
            return str(llguidance.LLMatcher.grammar_from_lark(self.source))
        return str(llguidance.LLMatcher.grammar_from_json_schema(self.source, defaults=JSON_OPTIONS))  # type: ignore[arg-type]


def check_size(text: str, param: str) -> None:
    if len(text.encode()) > MAX_SCHEMA_BYTES:
        raise InvalidInput(
            f"'{param}' is {len(text.encode())} bytes of JSON; schemas are limited to "
            f"{MAX_SCHEMA_BYTES} bytes: simplify it (fewer properties, shorter descriptions)",
            param=param,
            code="schema_too_large",
        )


def check_repeats(schema: Any, param: str) -> None:
    """Refuse counts past MAX_REPEAT anywhere in `schema` (a grammar unrolls them)."""
    stack = [schema]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            for key in REPEAT_KEYS:
                n = node.get(key)
                if isinstance(n, int | float) and n > MAX_REPEAT:
                    raise InvalidInput(
                        f"'{param}' has {key}: {n}; counts are limited to {MAX_REPEAT} in schemas "
                        "served here: lower it",
                        param=param,
                        code="schema_too_large",
                    )
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


class Matcher:
    """One request's position in its grammar."""

    __slots__ = ("_m",)

    def __init__(self, matcher: Any) -> None:
        self._m = matcher

    def fill(self, bitmask: Tensor, row: int) -> None:
        """Write the allowed next tokens into `bitmask[row]` (int32 words, one bit per token)."""
        v = bitmask[row]
        self._m.unsafe_compute_mask_ptr(v.data_ptr(), v.numel() * v.element_size())

    def advance(self, token: int) -> None:
        self._m.consume_token(token)

    @property
    def done(self) -> bool:
        """The output is complete: nothing but end-of-sequence may follow."""
        return bool(self._m.is_stopped())

    @property
    def accepting(self) -> bool:
        return bool(self._m.is_accepting())


@dataclass(frozen=True, slots=True)
class Grammar:
    """A compiled grammar; `matcher()` starts a request at its beginning."""

    constraint: Constraint
    compiled: Any  # an unused llguidance.LLMatcher, copied for each request

    def matcher(self) -> Matcher:
        return Matcher(self.compiled.deep_copy())


class GrammarCompiler:
    """One base's tokenizer as llguidance sees it, and its compiled grammars (bounded LRU).

    Safe to call from several threads: compiling drops the GIL, the cache is locked."""

    def __init__(
        self,
        hf_tokenizer: Any,
        vocab_size: int,
        eos_ids: Iterable[int],
        *,
        capacity: int = GRAMMAR_CACHE_SIZE,
    ) -> None:
        import llguidance.hf

        self.vocab_size = vocab_size
        try:
            self._tok = llguidance.hf.from_tokenizer(
                hf_tokenizer, n_vocab=vocab_size, eos_token=sorted(eos_ids)
            )
        except ValueError as e:  # e.g. a word-level tokenizer, which cannot spell arbitrary JSON
            raise InvalidInput(
                f"this model's tokenizer cannot be constrained to a grammar ({e}); send the request "
                "without response_format and tools, or use a model with a byte-level tokenizer",
                param="response_format",
            ) from None
        self._cache: OrderedDict[Constraint, Grammar] = OrderedDict()
        self._capacity = capacity
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def compile(self, constraint: Constraint) -> Grammar:
        """The compiled grammar (from the cache when seen before); InvalidInput naming
        `constraint.param` when it does not compile."""
        with self._lock:
            hit = self._cache.get(constraint)
            if hit is not None:
                self._cache.move_to_end(constraint)
                self.hits += 1
                return hit
        grammar = Grammar(constraint, self._compile(constraint))
        with self._lock:
            self.misses += 1
            self._cache[constraint] = grammar
            while len(self._cache) > self._capacity:
                self._cache.popitem(last=False)
        return grammar

    def _compile(self, c: Constraint) -> Any:
        import llguidance

        try:
            matcher = llguidance.LLMatcher(self._tok, c.grammar(), log_level=0)
        except Exception as e:  # whatever the engine refuses is the schema's fault
            raise _invalid(c, str(e)) from None
        if matcher.is_error():
            raise _invalid(c, matcher.get_error())
        return matcher

    def __len__(self) -> int:
        return len(self._cache)


def _invalid(c: Constraint, why: str) -> InvalidInput:
    return InvalidInput(
        f"'{c.param}' cannot be compiled to a grammar: {why.strip()[:300]}; fix the schema "
        "(see /docs: JSON Schema draft 2020-12, local $refs only)",
        param=c.param,
        code="invalid_schema",
    )


def mask_logits(logits: Tensor, matchers: Sequence[Matcher | None]) -> Tensor:
    """logits [R, V] with each constrained row's disallowed tokens at -inf; a row without a
    matcher is left as it is, so each row still depends on its own state only."""
    rows = [i for i, m in enumerate(matchers) if m is not None]
    if not rows:
        return logits
    vocab = logits.shape[-1]
    bitmask = torch.zeros(len(rows), (vocab + 31) // 32, dtype=torch.int32)  # [Rc, W]
    for j, i in enumerate(rows):
        matchers[i].fill(bitmask, j)  # type: ignore[union-attr]
    bits = torch.arange(32, dtype=torch.int32)
    allowed = ((bitmask[:, :, None] >> bits) & 1).reshape(len(rows), -1)[:, :vocab].bool()  # [Rc, V]
    index = torch.tensor(rows, device=logits.device)
    out = logits.clone()
    out[index] = logits[index].masked_fill(~allowed.to(logits.device), float("-inf"))
    return out
