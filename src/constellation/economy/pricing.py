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
from dataclasses import dataclass, replace
from typing import NamedTuple

from sqlalchemy.orm import Session

from constellation.errors import InvalidInput
from constellation.registry.models import Lineage, get_model, lineage
from constellation.registry.providers import exposure
from constellation.registry.terms import terms_for
from constellation.rounding import apportion

NS_PER_S = 1_000_000_000
BPS = 10_000
TERM_KINDS_ORDER = ("per_1k_input_tokens", "per_1k_output_tokens", "per_request", "per_compute_second")
ROLE_ORDER = {"infra": 0, "provider": 1, "base": 2, "adapter": 3, "data": 4, "platform": 5}


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


class Leg(NamedTuple):
    """One contributor's share of a price (never negative). A named tuple: several are made per
    request, and a tuple is built in half the time of a frozen dataclass."""

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


def _leg_key(k: tuple[str, str, str | None]) -> tuple[int, str, str, str]:
    return (ROLE_ORDER.get(k[1], 9), k[0], k[2] or "", k[1])


@dataclass(frozen=True, slots=True)
class Tariff:
    """A model's price as a linear function of usage, compiled once per (price inputs, rates):
    each leg's numerator is `c_in * input_tokens + c_out * output_tokens + c_req + c_ns * ns`
    over `denom`; keys are in canonical leg order so rounding matches term for term."""

    keys: tuple[tuple[str, str, str | None], ...]
    coef: tuple[tuple[int, int, int, int], ...]  # per key: input tokens, output tokens, 1, compute ns
    denom: int

    def price(self, *, input_tokens: int, output_tokens: int, compute_ns: int) -> tuple[int, list[Leg]]:
        """The price and its legs: exact shares, total rounded half up, largest remainder."""
        numers = [a * input_tokens + b * output_tokens + c + d * compute_ns for a, b, c, d in self.coef]
        total = (sum(numers) + self.denom // 2) // self.denom
        amounts = apportion(numers, self.denom, total)
        return total, [Leg(*k, x) for k, x in zip(self.keys, amounts, strict=True) if x > 0]


_TERM_COEF = {  # a term's numerator per unit of (input tokens, output tokens, request, compute ns)
    "per_1k_input_tokens": (1_000_000, 0, 0, 0),
    "per_1k_output_tokens": (0, 1_000_000, 0, 0),
    "per_request": (0, 0, NS_PER_S, 0),
    "per_compute_second": (0, 0, 0, 1),
}


def tariff(terms: Iterable[Term], rates: Rates) -> Tariff:
    """Compile terms and rates into a `Tariff` (numerators over NS_PER_S * scale * BPS)."""
    terms = list(terms)
    scale = math.lcm(1, *(t.weight_total for t in terms))
    shares: dict[tuple[str, str, str | None], list[int]] = {
        (rates.infra_account, "infra", None): [0, 0, 0, rates.infra_nanos_per_second * scale]
    }
    for t in terms:
        unit = _TERM_COEF.get(t.kind)
        if unit is None:
            raise InvalidInput(f"unknown term kind '{t.kind}'")
        mult = t.amount_nanos * t.weight * (scale // t.weight_total)
        acc = shares.setdefault((t.contributor, t.role, t.artifact), [0, 0, 0, 0])
        for i, u in enumerate(unit):
            acc[i] += u * mult
    subtotal = [sum(c[i] for c in shares.values()) for i in range(4)]
    scaled = {k: [x * BPS for x in c] for k, c in shares.items()}
    fee = scaled.setdefault((rates.platform_account, "platform", None), [0, 0, 0, 0])
    for i in range(4):  # the fee is basis points of the subtotal, exact over the same denominator
        fee[i] += subtotal[i] * rates.platform_fee_bps
    keys = tuple(sorted(scaled, key=_leg_key))
    coef = tuple((c[0], c[1], c[2], c[3]) for c in (scaled[k] for k in keys))
    return Tariff(keys, coef, NS_PER_S * scale * BPS)


def price_legs(
    terms: Iterable[Term], rates: Rates, *, input_tokens: int, output_tokens: int, compute_ns: int
) -> tuple[int, list[Leg]]:
    """The price and its legs for one request (compiles a `Tariff`; the meter caches those)."""
    return tariff(terms, rates).price(
        input_tokens=input_tokens, output_tokens=output_tokens, compute_ns=compute_ns
    )


def rescale(legs: Sequence[Leg], total: int) -> list[Leg]:
    """The same split scaled down to `total` (a capped charge), largest remainder again."""
    price = sum(leg.amount_nanos for leg in legs)
    if total >= price:
        return list(legs)
    if total <= 0:
        return []
    amounts = apportion([leg.amount_nanos * total for leg in legs], price, total)
    return [Leg(g.account, g.role, g.artifact, a) for g, a in zip(legs, amounts, strict=True) if a > 0]


def load_inputs(s: Session, *, model_name: str) -> PriceInputs:
    """A model's terms along its lineage (base, the model itself, each data set by weight)."""
    m = get_model(s, name=model_name)
    lin = lineage(s, model=m)
    terms: list[Term] = []
    if lin.base is not None:
        terms += _model_terms(s, lin.base.id, "base", lin.base.name)
    own = _model_terms(s, m.id, "base" if m.kind == "base" else "adapter", m.name)
    exposed = exposure(s, model_id=m.id)
    if exposed is not None:  # the upstream's list price: a leg owed to the provider's account
        owed = exposed.provider.contributor_id
        own = [replace(t, role="provider") if t.contributor == owed else t for t in own]
    terms += own
    total = sum(w for _, w in lin.datasets)
    for d, w in lin.datasets:
        terms += [
            Term(t.contributor_id, "data", d.name, t.kind, t.amount_nanos, w, total)
            for t in terms_for(s, subject_type="dataset", subject_id=d.id)
        ]
    info = _lineage_info(m.name, lin, terms)
    if exposed is not None:
        info["provider"] = exposed.provider.id
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
