"""Languages of the storefront: Babel message catalogs, compiled in memory at start-up.

The catalogs are the committed `.po` files under `kami/web/locale/`; they are read and compiled
once per process, so there is no `.mo` file to build and no manual step after a fresh clone.
Message ids are English; the English catalog is the identity, zh-CN is the default language.
"""

from __future__ import annotations

import gettext
from decimal import Decimal
from functools import cache
from importlib import resources
from io import BytesIO

from babel import Locale
from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.numbers import format_currency

from kami.kernel.money import EXPONENTS

DEFAULT = "zh_CN"
LOCALES: dict[str, str] = {"zh_CN": "中文", "en": "English"}
# The `lang` attribute of <html> and the cookie value for each locale.
HTML_LANG = {"zh_CN": "zh-CN", "en": "en"}
DOMAIN = "messages"


def catalog_path(locale: str) -> str:
    return str(resources.files("kami.web") / "locale" / locale / "LC_MESSAGES" / f"{DOMAIN}.po")


@cache
def translations(locale: str) -> gettext.GNUTranslations:
    """The compiled catalog of a locale (cached for the process). An unknown locale is the
    default's: the caller has already checked it against LOCALES."""
    if locale not in LOCALES:
        locale = DEFAULT
    with open(catalog_path(locale), "rb") as f:
        catalog = read_po(f, locale=locale, domain=DOMAIN)
    buf = BytesIO()
    write_mo(buf, catalog)
    buf.seek(0)
    return gettext.GNUTranslations(buf)


def pick(*candidates: str | None) -> str:
    """The first supported locale among the candidates (query, cookie, Accept-Language …),
    spelled like `zh_CN`, `zh-cn`, `en-US`; the default when none is."""
    for raw in candidates:
        if not raw:
            continue
        for part in raw.split(","):
            tag = part.split(";")[0].strip().replace("-", "_").lower()
            if not tag:
                continue
            if tag.startswith("zh"):
                return "zh_CN"
            if tag.startswith("en"):
                return "en"
    return DEFAULT


class Translator:
    """The gettext functions a template or page gets for one request's locale."""

    def __init__(self, locale: str) -> None:
        self.locale = locale if locale in LOCALES else DEFAULT
        self._t = translations(self.locale)

    def gettext(self, message: str, **values: object) -> str:
        text = self._t.gettext(message)
        return text % values if values else text

    def ngettext(self, singular: str, plural: str, n: int, **values: object) -> str:
        text = self._t.ngettext(singular, plural, n)
        return text % {"num": n, **values}

    def money(self, minor: int, currency: str) -> str:
        return format_money(minor, currency, self.locale)


def format_money(minor: int, currency: str, locale: str) -> str:
    """`¥10.00` in zh-CN, `CN¥10.00` in English: the locale's own currency format."""
    amount = Decimal(minor).scaleb(-EXPONENTS.get(currency, 2))
    return str(format_currency(amount, currency, locale=Locale.parse(locale)))
