"""Money formatting and parsing: integer nano-USD inside, exact decimal strings outside."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from constellation.errors import InvalidInput

NANOS_PER_USD = 1_000_000_000


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
    nanos = value * NANOS_PER_USD
    if nanos != nanos.to_integral_value():
        raise InvalidInput(f"'{text}' has more than nine decimals; the smallest unit is 0.000000001 USD")
    return int(nanos)
