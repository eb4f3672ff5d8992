"""The one source of "now": timezone-aware UTC, so storage and comparisons never mix zones."""

from datetime import UTC, datetime, tzinfo


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime) -> datetime:
    """Interpret naive datetimes (as SQLite returns them) as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def minute_in(moment: datetime, zone: tzinfo) -> str:
    """`moment` in `zone` (the shop's time zone), to the minute: 2026-12-24 20:00."""
    return moment.astimezone(zone).strftime("%Y-%m-%d %H:%M")


def shown_in(moment: datetime, zone: tzinfo) -> str:
    """`minute_in`, with the zone's offset from UTC as buyers read it beside it:
    2026-12-24 20:00 (UTC+08:00)."""
    return f"{minute_in(moment, zone)} ({offset_label(moment, zone)})"


def offset_label(moment: datetime, zone: tzinfo) -> str:
    """`zone`'s offset from UTC at `moment`: UTC+08:00, UTC-05:00, or UTC."""
    offset = moment.astimezone(zone).utcoffset()
    minutes = round(offset.total_seconds() / 60) if offset else 0
    if not minutes:
        return "UTC"
    sign = "+" if minutes > 0 else "-"
    return f"UTC{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
