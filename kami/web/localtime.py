"""Times as the shop's pages show them and read them: in the shop's time zone (KAMI_TIMEZONE),
to the minute, with the zone's offset from UTC said beside them."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from kami.kernel.clock import offset_label
from kami.kernel.errors import InvalidInput

__all__ = ["field_value", "offset_label", "read_field", "shown"]


def shown(moment: datetime, zone: tzinfo) -> str:
    """`moment` in the shop's zone, to the minute: 2026-12-24 20:00."""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def field_value(moment: datetime, zone: tzinfo) -> str:
    """`moment` as a `datetime-local` input's value, in the shop's zone, to the minute."""
    return moment.astimezone(zone).strftime("%Y-%m-%dT%H:%M")


def read_field(form: Any, name: str, zone: tzinfo) -> datetime | None:
    """A `datetime-local` field read in the shop's zone (the page says which); None if left
    empty. A time the zone skips (a daylight-saving gap) is read as the zone's rules place it."""
    value = (form.get(name) or "").strip()
    if not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInput(
            f"{name}: {value[:40]!r} is not a date and time like 2026-12-24T20:00", where=name
        ) from None
    if moment.tzinfo is not None:
        raise InvalidInput(
            f"{name}: give the time in the shop's time zone, without an offset", where=name
        )
    return moment.replace(tzinfo=zone)
