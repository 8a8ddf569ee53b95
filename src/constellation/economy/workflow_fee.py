"""A workflow author's per-run fee as a price: the run's own usage event is priced under the
model name `workflow:<name>@<version>`, whose one term is the fee, owed to the author."""

from __future__ import annotations

import json

from sqlalchemy.orm import Session

from constellation.economy.pricing import PriceInputs, Term
from constellation.registry.workflows import get_workflow

PREFIX = "workflow:"


def fee_model_name(name: str, version: int) -> str:
    return f"{PREFIX}{name}@{version}"


def load_fee_inputs(s: Session, *, model_name: str) -> PriceInputs:
    """The price inputs of a run's fee event (Meter's price cache calls this for `workflow:` names)."""
    wf = get_workflow(s, ref=model_name.removeprefix(PREFIX))
    ref = f"{wf.name}@{wf.version}"
    terms = (
        (Term(wf.author_id, "workflow", ref, "per_request", wf.fee_per_run_nanos),)
        if wf.fee_per_run_nanos
        else ()
    )
    info: dict[str, object] = {"model": model_name, "workflow": wf.name, "version": wf.version,
                               "contributors": [wf.author_id]}  # fmt: skip
    return PriceInputs(model_name, terms, info, json.dumps(info, sort_keys=True))
