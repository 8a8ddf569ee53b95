"""The per-request face of the economy: replay an idempotent retry, quote and admit before
compute, then record the usage event with its priced, balanced charge (group-committed).

Call order per request: `replay` -> `quote` + `admit` -> run the model -> `record`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from constellation.config import PriceBook
from constellation.economy import holds, workflow_fee
from constellation.economy.bill import Bill, bill_of
from constellation.economy.ledger import tenant_account
from constellation.economy.money import usd
from constellation.economy.pricing import Leg, PriceCache, PriceInputs, Rates, Tariff, load_inputs, tariff
from constellation.economy.tables import USAGE_STATUSES, UsageEvent
from constellation.economy.writer import PLATFORM_ACCOUNT, Posting, PostingWriter
from constellation.errors import Conflict, InvalidInput, NotFound, PaymentRequired
from constellation.registry.contributors import ensure_contributor
from constellation.registry.db import Database

# Worst-case compute for a hold: the highest recent per-token time, times this headroom;
# before a model's first request, this default per token (a CPU decode step of a small LM).
COMPUTE_HEADROOM = 2
DEFAULT_NS_PER_TOKEN = 20_000_000
FLOOR_TTL_S = 2.0  # how long a tenant seen without a spending floor skips the balance read
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(slots=True)
class UsageRecord:
    """What the serving path measured for one request. Not frozen: one is made per request,
    and a frozen dataclass of 13 fields takes three times as long to build."""

    request_id: str
    tenant_id: str
    model_name: str
    idempotency_key: str | None
    fingerprint: str  # sha256 of the canonical request body
    input_tokens: int
    output_tokens: int
    compute_ns: int
    device_class: str  # "cpu" | "gpu"
    status: str  # "succeeded" | "failed" | "cancelled" (a dropped stream, billed for its output)
    started_at: datetime
    finished_at: datetime
    response: dict[str, Any] | None  # the body to replay for a retry with the same key
    hold: bool = False  # `Meter.admit` took a hold under this request id: posting it releases it
    operation: str = "inference"  # or "finetune"


_US = timedelta(microseconds=1)
# Made once (json.dumps makes one per call); arrays in a response body (embeddings) as lists.
_compact = json.JSONEncoder(separators=(",", ":"), default=lambda o: o.tolist()).encode


def _us(t: datetime) -> int:
    """Microseconds since the epoch; naive datetimes are taken as UTC."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return (t - _EPOCH) // _US


class Meter:
    """One per process: a price cache, in-flight holds per tenant and the group-commit writer."""

    def __init__(
        self,
        db: Database,
        prices: PriceBook,
        *,
        infra_accounts: dict[str, str] | None = None,
        price_ttl_s: float = 5.0,
        max_batch: int = 2000,
    ) -> None:
        self._db = db
        self._prices = prices
        self._infra = dict(infra_accounts or {})
        self._cache = PriceCache(self._load, ttl_s=price_ttl_s)
        self._rates: dict[str, Rates] = {}
        self._tariffs: dict[tuple[str, str], tuple[PriceInputs, Tariff]] = {}
        self._hold_ids = itertools.count()
        self._ns_per_token: dict[str, int] = {}  # model -> decaying peak compute per token
        self._unlimited: dict[str, float] = {}  # tenant -> when last seen without a floor
        self._rechecking: set[str] = set()  # tenants whose floor one request is re-reading

        self._writer = PostingWriter(db, max_batch=max_batch)

    # -- before compute -------------------------------------------------------------------

    def replay(
        self, *, tenant_id: str, idempotency_key: str, fingerprint: str, with_bill: bool = True
    ) -> dict[str, Any] | None:
        """The first response for this key, carrying its bill (`with_bill=False`: as it was kept,
        e.g. a workflow run's, whose bill is its steps' and not this event's alone); None if the
        key is new."""
        with self._db.session() as s:
            row = s.execute(
                select(UsageEvent.fingerprint, UsageEvent.response, UsageEvent.bill).where(
                    UsageEvent.tenant_id == tenant_id, UsageEvent.idempotency_key == idempotency_key
                )
            ).first()
        if row is None:
            return None
        if row.fingerprint != fingerprint:
            raise Conflict(
                f"the Idempotency-Key '{idempotency_key}' was already used with a different request body; "
                "use a new key for a new request, or resend the original body",
                param="Idempotency-Key",
                code="idempotency_key_reused",
            )
        body = dict(row.response or {})
        if with_bill:
            body["constellation"] = {
                **(body.get("constellation") or {}),
                **Bill.from_dict(row.bill).as_dict(),
            }
        return body

    def quote_training(self, *, seconds: float, device_class: str = "cpu") -> int:
        """The most a fine-tuning job of at most `seconds` should cost, in nano-USD (for `admit`)."""
        compiled = tariff((), self._rate(device_class))
        return compiled.price(input_tokens=0, output_tokens=0, compute_ns=int(seconds * 1e9))[0]

    def record_blocking(self, usage: UsageRecord) -> Bill:
        """`record` from a thread without an event loop (a fine-tuning job's)."""
        return asyncio.run(self.record(usage))

    def quote(
        self,
        *,
        model_name: str,
        input_tokens: int,
        max_output_tokens: int,
        compute_ns_estimate: int,
        device_class: str = "cpu",
    ) -> int:
        """The most this request should cost, in nano-USD (for `admit`)."""
        total, _ = self._tariff(self._cache.get(model_name), device_class).price(
            input_tokens=input_tokens, output_tokens=max_output_tokens, compute_ns=compute_ns_estimate
        )
        return total

    def price(self, *, model_name: str, device_class: str = "cpu") -> tuple[int, list[Leg]]:
        """A request's price and legs when it uses no tokens and no compute: a workflow's fee."""
        return self._tariff(self._cache.get(model_name), device_class).price(
            input_tokens=0, output_tokens=0, compute_ns=0
        )

    def unlimited(self, tenant_id: str) -> bool:
        """True when the tenant was seen with no spending floor in the last FLOOR_TTL_S seconds:
        `admit` has nothing to check, so the hot path skips its database read. Once that has
        expired, the first request re-reads it (False: call `admit`) and the others go on as
        before until it has (for at most another FLOOR_TTL_S): one read, not one per request."""
        seen = self._unlimited.get(tenant_id)
        if seen is None:
            return False
        age = time.monotonic() - seen
        if age < FLOOR_TTL_S or (age < 2 * FLOOR_TTL_S and tenant_id in self._rechecking):
            return True
        self._rechecking.add(tenant_id)
        return False

    def admit(self, *, tenant_id: str, estimate_nanos: int, hold_id: str | None = None) -> bool:
        """Reserve the request's worst-case price against the tenant's balance, atomically
        (one conditional UPDATE, so concurrent requests of any process cannot overrun it), or
        refuse with 402. Returns True when a hold was taken: `record` of the usage with
        request id `hold_id` releases it. A tenant without a floor holds nothing."""
        hold_id = hold_id or f"hold_{next(self._hold_ids)}"
        try:
            outcome = holds.reserve(
                self._db, account_id=tenant_account(tenant_id), hold_id=hold_id, amount_nanos=estimate_nanos
            )
        finally:
            self._rechecking.discard(tenant_id)
        if outcome.floor is None:
            self._unlimited[tenant_id] = time.monotonic()
            return False
        self._unlimited.pop(tenant_id, None)
        if not outcome.held and estimate_nanos > 0:
            available = outcome.balance - outcome.floor - outcome.held_nanos
            raise PaymentRequired(
                f"tenant '{tenant_id}' can spend {usd(max(available, 0))} USD now "
                f"(balance {usd(outcome.balance)}, {usd(outcome.held_nanos)} held by requests in flight) "
                f"but this request may cost up to {usd(estimate_nanos)} USD; add funds with "
                f"`constellation tenants fund {tenant_id} AMOUNT` or raise its spending limit",
                code="insufficient_balance",
            )
        return outcome.held

    def compute_estimate(self, model_name: str, tokens: int) -> int:
        """A worst-case compute time for `tokens` tokens of this model, for holds: the highest
        recent per-token time seen (decaying), with headroom; a conservative default before any."""
        per_token = self._ns_per_token.get(model_name, DEFAULT_NS_PER_TOKEN)
        return max(tokens, 1) * per_token * COMPUTE_HEADROOM

    def _observe(self, u: UsageRecord) -> None:
        tokens = u.input_tokens + u.output_tokens
        if tokens <= 0 or u.compute_ns <= 0:
            return
        seen = -(-u.compute_ns // tokens)
        old = self._ns_per_token.get(u.model_name)
        self._ns_per_token[u.model_name] = seen if old is None else max(seen, old - old // 64)

    # -- after compute ----------------------------------------------------------------------

    async def record(self, usage: UsageRecord) -> Bill:
        """Write the usage event and its charge in one group-committed transaction; returns once
        committed. A repeat of a request id or of (tenant, idempotency key) returns the first bill."""
        fut: asyncio.Future[Bill] = asyncio.get_running_loop().create_future()
        self._observe(usage)
        self._writer.submit(self._posting(usage, fut))
        return await fut

    def _posting(self, u: UsageRecord, fut: asyncio.Future[Bill]) -> Posting:
        legs: list[Leg]
        if u.status not in USAGE_STATUSES:
            raise InvalidInput(f"usage status must be one of {USAGE_STATUSES}, not '{u.status}'")
        inputs = self._inputs_for(u)
        succeeded = u.status == "succeeded"
        total, legs = 0, []
        if succeeded or (u.status == "cancelled" and (u.output_tokens or u.compute_ns)):
            # a dropped stream pays for what it produced; dropped before any compute, nothing
            total, legs = self._tariff(inputs, u.device_class).price(
                input_tokens=u.input_tokens, output_tokens=u.output_tokens, compute_ns=u.compute_ns
            )
        # Only a retry under the same key replays the response, so only then is it kept.
        keep = succeeded and u.idempotency_key is not None and u.response is not None
        bill, bill_json = bill_of(u.request_id, total, legs)
        return Posting(
            request_id=u.request_id,
            tenant_id=u.tenant_id,
            # A failed request does not claim its key: the client's retry must run the model.
            idempotency_key=u.idempotency_key if succeeded else None,
            fingerprint=u.fingerprint,
            list_price=total,
            legs=legs,
            usage_row=(
                u.model_name,
                inputs.lineage_json,
                u.input_tokens,
                u.output_tokens,
                u.compute_ns,
                u.device_class,
                u.status,
                u.operation,
                _us(u.started_at),
                _us(u.finished_at),
            ),
            response_json=_compact(u.response) if keep else None,
            fut=fut,
            bill=bill,
            bill_json=bill_json,
            hold=u.hold,
        )

    def _inputs_for(self, u: UsageRecord) -> PriceInputs:
        if u.operation == "finetune":  # training is compute: infrastructure and the platform fee
            info: dict[str, object] = {"model": u.model_name, "operation": "finetune"}
            return PriceInputs(f"finetune:{u.model_name}", (), info, json.dumps(info))
        try:
            return self._cache.get(u.model_name)
        except NotFound:
            if u.status != "failed":
                raise
            info = {"model": u.model_name}  # a failed request for a model that does not exist
            return PriceInputs(u.model_name, (), info, json.dumps(info))

    # -- plumbing -------------------------------------------------------------------------

    def _load(self, model_name: str) -> PriceInputs:
        with self._db.session() as s:
            if model_name.startswith(workflow_fee.PREFIX):  # a workflow run's fee to its author
                return workflow_fee.load_fee_inputs(s, model_name=model_name)
            return load_inputs(s, model_name=model_name)

    def _tariff(self, inputs: PriceInputs, device_class: str) -> Tariff:
        """The compiled price of a model on a device class, rebuilt when its inputs reload."""
        hit = self._tariffs.get((inputs.model_name, device_class))
        if hit is not None and hit[0] is inputs:
            return hit[1]
        compiled = tariff(inputs.terms, self._rate(device_class))
        self._tariffs[(inputs.model_name, device_class)] = (inputs, compiled)
        return compiled

    def _rate(self, device_class: str) -> Rates:
        rates = self._rates.get(device_class)
        if rates is not None:
            return rates
        per_s = self._prices.infra_nanos_per_second.get(device_class)
        if per_s is None:
            known = ", ".join(sorted(self._prices.infra_nanos_per_second))
            raise InvalidInput(f"no infrastructure rate for device class '{device_class}'; known: {known}")
        account = self._infra.get(device_class, f"infra-{device_class}")
        with self._db.session() as s:
            ensure_contributor(s, id=account, name=f"Infrastructure ({device_class})", kind="infrastructure")
            ensure_contributor(s, id=PLATFORM_ACCOUNT, name="Constellation platform", kind="platform")
        rates = Rates(account, per_s, PLATFORM_ACCOUNT, self._prices.platform_fee_bps)
        self._rates[device_class] = rates
        return rates

    def invalidate_prices(self, model_name: str | None = None) -> None:
        """Forget cached price inputs and spending floors (after a term, lineage or limit change)."""
        self._cache.invalidate(model_name)
        self._unlimited.clear()

    def close(self) -> None:
        """Write everything queued, then stop the writer."""
        self._writer.close()
