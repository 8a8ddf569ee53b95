"""A charge's bill: its price and its split into legs, as the response's `constellation` field
shows it and as the usage row stores it (compact JSON). Made by the caller's thread (`bill_of`),
so that the ledger writer, the one serial step, only lays out rows."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from constellation.economy.money import usd
from constellation.economy.pricing import Leg

_json_str = json.encoder.encode_basestring_ascii  # what json.dumps does to a str, in C


@dataclass(slots=True)
class Bill:
    """A request's price and its split; `as_dict()` goes into the response's `constellation`.
    Not frozen, like `UsageRecord`: one is made per request."""

    request_id: str
    price_nanos: int
    split: list[dict[str, Any]] = field(default_factory=list)
    written_off_nanos: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = {
            "request_id": self.request_id,
            "price_nanos": self.price_nanos,
            "price_usd": usd(self.price_nanos),
            "split": self.split,
        }
        if self.written_off_nanos:
            out["written_off_nanos"] = self.written_off_nanos
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Bill:
        return cls(
            d["request_id"], int(d["price_nanos"]), list(d["split"]), int(d.get("written_off_nanos", 0))
        )


_LEG_HEADS: dict[tuple[str, str, str | None], str] = {}  # a split entry's JSON up to its amount


def _leg_head(g: Leg) -> str:
    """`{"account":..,"role":..,"artifact":..,"amount_nanos":` -- the same few per model, so made once."""
    key = (g.account, g.role, g.artifact)
    head = _LEG_HEADS.get(key)
    if head is None:
        if len(_LEG_HEADS) > 100_000:  # contributors x artifacts; a bound all the same
            _LEG_HEADS.clear()
        entry = {"account": g.account, "role": g.role, "artifact": g.artifact}
        head = _LEG_HEADS[key] = json.dumps(entry, separators=(",", ":"))[:-1] + ',"amount_nanos":'
    return head


def bill_of(request_id: str, price: int, legs: Sequence[Leg], written_off: int = 0) -> tuple[Bill, str]:
    """A charge's bill and that bill's compact JSON (what the usage row stores), from its legs."""
    dicts = [{"account": a, "role": r, "artifact": f, "amount_nanos": x} for a, r, f, x in legs]
    split = ",".join([_leg_head(g) + str(g.amount_nanos) + "}" for g in legs])
    text = f'{{"request_id":{_json_str(request_id)},"price_nanos":{price},"split":[{split}]'
    text += f',"written_off_nanos":{written_off}}}' if written_off else "}"
    return Bill(request_id, price, dicts, written_off), text
