"""A request's life in the decoder: `Prepared` (validated and tokenised), `Seq` (inside the engine
loop), `Work` (its tokens in one step) and `Delta` (one streamed piece of its answer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from constellation.engine.decoder.detokenizer import TextStream
from constellation.engine.decoder.sampling import SamplingParams
from constellation.engine.decoder.structured import Grammar, Matcher
from constellation.engine.lora.layer import NO_ADAPTER
from constellation.engine.spec import AdapterSpec, BaseSpec


@dataclass(frozen=True, slots=True)
class Prepared:
    """A validated, tokenised request, ready for `DecoderEngine.generate`."""

    base: BaseSpec
    adapter: AdapterSpec | None
    prompt_ids: tuple[int, ...]
    params: SamplingParams
    max_new: int
    tenant: str = ""  # fairness key: waiting sequences are admitted in turn across keys
    grammar: Grammar | None = None  # constrained decoding: the output must match it


@dataclass(frozen=True, slots=True)
class Delta:
    """One streamed piece of an answer; the last has `finish_reason`. `compute_ns` is the compute
    attributed to the request so far (what a stream dropped here is billed for)."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
    prompt_tokens: int
    completion_tokens: int
    compute_ns: int | None = None
    queue_ns: int | None = None  # on the first piece: how long the request waited to be admitted


Emit = Callable[[Delta | BaseException], object]


@dataclass(slots=True, eq=False)
class Seq:
    """One request inside the engine loop."""

    prep: Prepared
    emit: Emit
    stream: TextStream
    gen: torch.Generator
    out: list[int] = field(default_factory=list)
    table: list[int] = field(default_factory=list)  # KV-cache blocks
    n_cached: int = 0  # tokens whose k/v are in the cache
    slot: int = NO_ADAPTER
    pinned: bool = False
    matcher: Matcher | None = None  # where a constrained output is in its grammar
    compute_ns: int = 0
    cancelled: bool = False
    finished: bool = False
    queued: bool = True  # counted against max_queue until first admitted or dropped
    submitted_ns: int = field(default_factory=time.monotonic_ns)
    queue_ns: int | None = None  # submission to first admission (a preempted one keeps its first)

    @property
    def n_tokens(self) -> int:
        return len(self.prep.prompt_ids) + len(self.out)

    def token_slice(self, start: int, end: int) -> list[int]:
        p = self.prep.prompt_ids
        return [*(p[start:end]), *self.out[max(0, start - len(p)) : max(0, end - len(p))]]


@dataclass(frozen=True, slots=True)
class Work:
    seq: Seq
    start: int  # first new position
    n: int  # new tokens this step

    @property
    def samples(self) -> bool:
        return self.start + self.n == self.seq.n_tokens
