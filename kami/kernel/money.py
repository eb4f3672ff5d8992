"""Money is an integer of minor units plus an ISO 4217 code; floats never appear."""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from kami.kernel.errors import InvalidInput

# Minor-unit exponents of the currencies a shop of virtual goods meets; anything else is refused
# rather than guessed, because a wrong exponent is a factor-100 pricing error.
EXPONENTS: dict[str, int] = {
    "CNY": 2,
    "USD": 2,
    "EUR": 2,
    "GBP": 2,
    "HKD": 2,
    "TWD": 2,
    "SGD": 2,
    "AUD": 2,
    "CAD": 2,
    "MYR": 2,
    "THB": 2,
    "PHP": 2,
    "INR": 2,
    "RUB": 2,
    "BRL": 2,
    "MXN": 2,
    "CHF": 2,
    "JPY": 0,
    "KRW": 0,
    "VND": 0,
    "IDR": 2,
}

_CODE = re.compile(r"^[A-Z]{3}$")

# Amounts are stored in 32-bit INTEGER columns: a larger one would fail in the database.
MAX_MINOR = 2**31 - 1


def check_currency(code: str, *, where: str = "currency") -> str:
    if not _CODE.match(code) or code not in EXPONENTS:
        raise InvalidInput(f"unsupported currency {code!r}", where=where)
    return code


@dataclass(frozen=True, slots=True)
class Money:
    amount_minor: int
    currency: str

    def __post_init__(self) -> None:
        if isinstance(self.amount_minor, bool) or not isinstance(self.amount_minor, int):
            raise InvalidInput("amount must be an integer of minor units", where="amount_minor")
        check_currency(self.currency)

    def __mul__(self, factor: int) -> Money:
        return Money(self.amount_minor * factor, self.currency)

    def format(self) -> str:
        exp = EXPONENTS[self.currency]
        if exp == 0:
            return f"{self.amount_minor} {self.currency}"
        sign = "-" if self.amount_minor < 0 else ""
        whole, frac = divmod(abs(self.amount_minor), 10**exp)
        return f"{sign}{whole}.{frac:0{exp}d} {self.currency}"


def parse_major(text: str, currency: str, *, where: str = "amount") -> int:
    """Turn a decimal string in major units ("25.00") into minor units, refusing lost precision."""
    exp = EXPONENTS[check_currency(currency)]
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        raise InvalidInput(f"{text!r} is not a decimal amount", where=where) from None
    if not value.is_finite():  # Infinity, NaN and sNaN parse, but are no amount
        raise InvalidInput(f"{text!r} is not a decimal amount", where=where)
    # Checked before scaling, which would overflow the decimal context for 1e999999.
    if value.adjusted() + exp > len(str(MAX_MINOR)):
        raise InvalidInput(f"{text!r} is too large an amount", where=where)
    scaled = value.scaleb(exp)
    if scaled != scaled.to_integral_value():
        raise InvalidInput(f"{text!r} has more than {exp} decimal places", where=where)
    if abs(scaled) > MAX_MINOR:
        raise InvalidInput(f"{text!r} is too large an amount", where=where)
    return int(scaled)
