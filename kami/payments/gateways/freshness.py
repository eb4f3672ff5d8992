"""The freshness window on signed notifications and answers (Stripe, WeChat Pay, 易支付 V2).

A signature older than the window may be a replay; one from the future means a clock is wrong.
Both are refused with the slug `stale-timestamp`, so an operator sees a clock problem as such.
"""

from __future__ import annotations

from kami.payments.gateways.base import NotificationRejected


def stale_timestamp(what: str, skew: float, tolerance: int, where: str) -> NotificationRejected:
    """The rejection of a signature `skew` seconds away from our clock (beyond `tolerance`);
    `what` names the timestamp and shows its value ("Wechatpay-Timestamp 1700000000")."""
    when = "in the future" if skew > 0 else "old"
    return NotificationRejected(
        f"{what} is {abs(int(skew))} s {when}; the tolerance is {tolerance} s",
        where=where,
        slug="stale-timestamp",
    )
