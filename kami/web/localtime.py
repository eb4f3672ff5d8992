"""Times as the shop's pages show them and read them: in the shop's time zone (KAMI_TIMEZONE),
to the minute, with the zone's offset from UTC said beside them."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any

from kami.kernel.clock import minute_in, offset_label
from kami.kernel.errors import InvalidInput


def helpers(zone: tzinfo) -> dict[str, Callable[[datetime], str]]:
    """What the console's and the storefront's templates show times with, in `zone`: the
    minute (`local_time`), the zone's offset from UTC (`zone_of`), and a full ISO time with its
    offset (`local_iso`)."""
    return {
        "local_time": lambda moment: minute_in(moment, zone),
        "zone_of": lambda moment: offset_label(moment, zone),
        "local_iso": lambda moment: moment.astimezone(zone).isoformat(timespec="seconds"),
    }


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
