"""Money formatting and parsing: integer nano-USD inside, exact decimal strings outside."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from constellation.errors import InvalidInput

NANOS_PER_USD = 1_000_000_000
# The documented bounds of every money input, so that no sum the ledger forms can overflow 64 bits
# (the tables refuse balances beyond +-2**62 as a last guard):
MAX_AMOUNT_NANOS = 10**15  # one funding, spending limit or correction: 1,000,000 USD
MAX_BALANCE_NANOS = 10**18  # a tenant's prepaid balance: 1,000,000,000 USD
MAX_RATE_NANOS = 10**12  # one contribution term or price-book rate, per its unit: 1,000 USD


def check_amount(nanos: int, *, param: str, maximum: int = MAX_AMOUNT_NANOS, minimum: int = 0) -> int:
    """`nanos` if within [minimum, maximum]; otherwise a 400 that names the bound."""
    if not minimum <= nanos <= maximum:
        raise InvalidInput(
            f"'{param}' must be between {usd(minimum)} and {usd(maximum)} USD "
            f"({minimum} to {maximum} nano-USD), not {nanos}",
            param=param,
        )
    return nanos


def usd(nanos: int) -> str:
    """'12.345678901' style, exact (nine decimals)."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}"


def parse_usd(text: str) -> int:
    """'25', '25.50' or '0.000001' USD -> nano-USD; more than nine decimals is refused."""
    try:
        value = Decimal(text.strip().lstrip("$"))
    except InvalidOperation:
        raise InvalidInput(f"'{text}' is not an amount in USD; write e.g. 25 or 25.50")
    if not value.is_finite():
        raise InvalidInput(f"'{text}' is not an amount in USD; write e.g. 25 or 25.50")
    nanos = value * NANOS_PER_USD
    if abs(nanos) > MAX_BALANCE_NANOS:
        raise InvalidInput(
            f"'{text}' is more than any amount the ledger accepts ({usd(MAX_BALANCE_NANOS)} USD)"
        )
    if nanos != nanos.to_integral_value():
        raise InvalidInput(f"'{text}' has more than nine decimals; the smallest unit is 0.000000001 USD")
    return int(nanos)
