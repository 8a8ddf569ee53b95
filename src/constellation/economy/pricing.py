"""Contribution-based pricing: infra + every term along a model's lineage + a platform fee,
computed exactly over one common denominator and rounded by largest remainder into legs.

Pure functions on small dataclasses; `PriceCache` loads a model's price inputs from the
registry once and keeps them for a short TTL (or until `invalidate`).
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from sqlalchemy.orm import Session

from constellation.errors import InvalidInput
from constellation.registry.models import Lineage, get_model, lineage
from constellation.registry.terms import terms_for

NS_PER_S = 1_000_000_000
BPS = 10_000
TERM_KINDS_ORDER = ("per_1k_input_tokens", "per_1k_output_tokens", "per_request", "per_compute_second")
ROLE_ORDER = {"infra": 0, "base": 1, "adapter": 2, "data": 3, "platform": 4}


@dataclass(frozen=True, slots=True)
class Term:
    """One contribution term; a data set's term carries its lineage weight out of the total."""

    contributor: str
    role: str
    artifact: str
    kind: str
    amount_nanos: int
    weight: int = 1
    weight_total: int = 1


@dataclass(frozen=True, slots=True)
class Leg:
    """One contributor's share of a price (never negative)."""

    account: str
    role: str
    artifact: str | None
    amount_nanos: int

    def as_dict(self) -> dict[str, object]:
        return {
            "account": self.account,
            "role": self.role,
            "artifact": self.artifact,
            "amount_nanos": self.amount_nanos,
        }


@dataclass(frozen=True, slots=True)
class Rates:
    """The platform side of a price: infra rate for this device class, its account, the fee."""

    infra_account: str
    infra_nanos_per_second: int
    platform_account: str
    platform_fee_bps: int


@dataclass(frozen=True, slots=True)
class PriceInputs:
    """Everything pricing needs about one model, loaded once from the registry."""

    model_name: str
    terms: tuple[Term, ...]
    lineage: dict[str, object]
    lineage_json: str


def _term_numer(kind: str, amount: int, *, input_tokens: int, output_tokens: int, compute_ns: int) -> int:
    """The term's charge in units of 1e-9 nano-USD (i.e. over denominator NS_PER_S)."""
    if kind == "per_1k_input_tokens":
        return amount * input_tokens * 1_000_000
    if kind == "per_1k_output_tokens":
        return amount * output_tokens * 1_000_000
    if kind == "per_request":
        return amount * NS_PER_S
    if kind == "per_compute_second":
        return amount * compute_ns
    raise InvalidInput(f"unknown term kind '{kind}'")


def allocate(numers: Sequence[int], denom: int, total: int) -> list[int]:
    """Integers summing to `total`, each floor(n/denom) or one more, the extras going to the
    largest remainders (ties to the earlier index; callers pass a canonical order)."""
    floors = [n // denom for n in numers]
    extra = total - sum(floors)
    if extra < 0 or extra > len(numers):
        raise ValueError(f"cannot allocate {total} over shares whose floors sum to {sum(floors)}")
    order = sorted(range(len(numers)), key=lambda i: (-(numers[i] % denom), i))
    for i in order[:extra]:
        floors[i] += 1
    return floors


def _leg_key(k: tuple[str, str, str | None]) -> tuple[int, str, str, str]:
    return (ROLE_ORDER.get(k[1], 9), k[0], k[2] or "", k[1])


def price_legs(
    terms: Iterable[Term], rates: Rates, *, input_tokens: int, output_tokens: int, compute_ns: int
) -> tuple[int, list[Leg]]:
    """The price and its legs: exact rational shares over one denominator, the total rounded
    half up, then largest remainder so that the legs sum to the price exactly."""
    terms = list(terms)
    scale = math.lcm(1, *(t.weight_total for t in terms))
    usage = {"input_tokens": input_tokens, "output_tokens": output_tokens, "compute_ns": compute_ns}
    # Numerators over NS_PER_S * scale; then everything times BPS so the fee is exact too.
    shares: dict[tuple[str, str, str | None], int] = {
        (rates.infra_account, "infra", None): rates.infra_nanos_per_second * compute_ns * scale
    }
    for t in terms:
        n = _term_numer(t.kind, t.amount_nanos, **usage) * t.weight * (scale // t.weight_total)
        key = (t.contributor, t.role, t.artifact)
        shares[key] = shares.get(key, 0) + n
    subtotal = sum(shares.values())
    shares = {k: v * BPS for k, v in shares.items()}
    fee_key = (rates.platform_account, "platform", None)
    shares[fee_key] = shares.get(fee_key, 0) + subtotal * rates.platform_fee_bps
    return _round(shares, NS_PER_S * scale * BPS)


def _round(shares: dict[tuple[str, str, str | None], int], denom: int) -> tuple[int, list[Leg]]:
    keys = sorted(shares, key=_leg_key)
    numers = [shares[k] for k in keys]
    total = (sum(numers) + denom // 2) // denom
    amounts = allocate(numers, denom, total)
    legs = [Leg(k[0], k[1], k[2], a) for k, a in zip(keys, amounts, strict=True) if a > 0]
    return total, legs


def rescale(legs: Sequence[Leg], total: int) -> list[Leg]:
    """The same split scaled down to `total` (a capped charge), largest remainder again."""
    price = sum(leg.amount_nanos for leg in legs)
    if total >= price:
        return list(legs)
    if total <= 0:
        return []
    amounts = allocate([leg.amount_nanos * total for leg in legs], price, total)
    return [Leg(g.account, g.role, g.artifact, a) for g, a in zip(legs, amounts, strict=True) if a > 0]


def load_inputs(s: Session, *, model_name: str) -> PriceInputs:
    """A model's terms along its lineage (base, the model itself, each data set by weight)."""
    m = get_model(s, name=model_name)
    lin = lineage(s, model=m)
    terms: list[Term] = []
    if lin.base is not None:
        terms += _model_terms(s, lin.base.id, "base", lin.base.name)
    terms += _model_terms(s, m.id, "base" if m.kind == "base" else "adapter", m.name)
    total = sum(w for _, w in lin.datasets)
    for d, w in lin.datasets:
        terms += [
            Term(t.contributor_id, "data", d.name, t.kind, t.amount_nanos, w, total)
            for t in terms_for(s, subject_type="dataset", subject_id=d.id)
        ]
    info = _lineage_info(m.name, lin, terms)
    return PriceInputs(m.name, tuple(terms), info, json.dumps(info, sort_keys=True))


def _model_terms(s: Session, model_id: int, role: str, name: str) -> list[Term]:
    return [
        Term(t.contributor_id, role, name, t.kind, t.amount_nanos)
        for t in terms_for(s, subject_type="model", subject_id=model_id)
    ]


def _lineage_info(name: str, lin: Lineage, terms: list[Term]) -> dict[str, object]:
    models = lin.models
    return {
        "model": name,
        "base": lin.base.name if lin.base else None,
        "adapter": lin.model.name if lin.base else None,
        "datasets": [{"name": d.name, "weight": w, "licence": d.licence_id} for d, w in lin.datasets],
        "licences": sorted({m.licence_id for m in models} | {d.licence_id for d, _ in lin.datasets}),
        "contributors": sorted(
            {m.author_id for m in models}
            | {d.provider_id for d, _ in lin.datasets}
            | {t.contributor for t in terms}
        ),
    }


class PriceCache:
    """Price inputs per model, kept `ttl_s` seconds so that pricing does not query per request;
    `invalidate()` drops them at once after a term or lineage change in this process."""

    def __init__(self, load: Callable[[str], PriceInputs], ttl_s: float = 5.0) -> None:
        self._load = load
        self._ttl_s = ttl_s
        self._items: dict[str, tuple[float, PriceInputs]] = {}
        self._lock = threading.Lock()

    def get(self, model_name: str) -> PriceInputs:
        now = time.monotonic()
        hit = self._items.get(model_name)
        if hit is not None and hit[0] > now:
            return hit[1]
        inputs = self._load(model_name)
        with self._lock:
            self._items[model_name] = (now + self._ttl_s, inputs)
        return inputs

    def invalidate(self, model_name: str | None = None) -> None:
        with self._lock:
            if model_name is None:
                self._items.clear()
            else:
                self._items.pop(model_name, None)
