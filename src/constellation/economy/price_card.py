"""A model's price card: every contributor's terms along its lineage and the split of one
reference request, priced by the same tariff the meter compiles for real requests."""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from constellation.config import PriceBook
from constellation.economy.pricing import Rates, load_inputs, tariff
from constellation.economy.writer import PLATFORM_ACCOUNT

REFERENCE_INPUT_TOKENS = 1000
REFERENCE_OUTPUT_TOKENS = 1000  # generative models only; encoders produce no tokens
REFERENCE_COMPUTE_NS = 100_000_000


def rates_for(prices: PriceBook, device_class: str) -> Rates:
    """The platform's rates on a device class, with the accounts the meter pays them to."""
    per_s = prices.infra_nanos_per_second.get(device_class, 0)
    return Rates(f"infra-{device_class}", per_s, PLATFORM_ACCOUNT, prices.platform_fee_bps)


def price_card(s: Session, *, model_name: str, task: str, rates: Rates) -> dict[str, Any]:
    """The terms (data terms carry their lineage weight out of the total) and the price and split
    of a reference request: 1,000 input tokens, 1,000 output tokens for a causal LM, 100 ms."""
    inputs = load_inputs(s, model_name=model_name)
    out_tokens = REFERENCE_OUTPUT_TOKENS if task == "causal-lm" else 0
    price, legs = tariff(inputs.terms, rates).price(
        input_tokens=REFERENCE_INPUT_TOKENS, output_tokens=out_tokens, compute_ns=REFERENCE_COMPUTE_NS
    )
    return {
        "terms": [
            {
                "contributor": t.contributor,
                "role": t.role,
                "artifact": t.artifact,
                "kind": t.kind,
                "amount_nanos": t.amount_nanos,
                "weight": t.weight,
                "weight_total": t.weight_total,
            }
            for t in inputs.terms
        ],
        "infra_nanos_per_second": rates.infra_nanos_per_second,
        "platform_fee_bps": rates.platform_fee_bps,
        "reference": {
            "input_tokens": REFERENCE_INPUT_TOKENS,
            "output_tokens": out_tokens,
            "compute_ns": REFERENCE_COMPUTE_NS,
            "price_nanos": price,
            "split": [leg.as_dict() for leg in legs],
        },
    }
