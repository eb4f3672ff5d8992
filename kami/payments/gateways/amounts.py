"""Yuan as the Chinese channels write amounts ("12.34"), to and from fen."""

from __future__ import annotations

from decimal import Decimal


def yuan(amount_minor: int) -> str:
    """Fen as yuan with two decimals, the way Alipay and 易支付 want amounts."""
    whole, fen = divmod(amount_minor, 100)
    return f"{whole}.{fen:02d}"


def fen_of(value: Decimal) -> int | None:
    """A decimal amount of yuan in fen; None unless finite, not negative and in whole fen."""
    if not value.is_finite() or value < 0 or value != value.quantize(Decimal("0.01")):
        return None
    return int(value * 100)
