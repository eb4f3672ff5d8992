"""Payment notifications that arrive together, applied in one transaction (decision 0022).

On PostgreSQL a payment waits for six round trips to the database (decision 0021), and a
server process's event loop waits with it. In a flash sale the winners pay in the same few
seconds, and while each payment waited for its own answers the checkouts behind it waited too.
Here the notifications a process reads in one pass of its loop are applied together: each
statement of `notify.apply_notice` goes out once for all of them, in one round trip
(`Prepared.run_each`), so a group of eight waits for the six round trips of one. On SQLite
(decision 0023) a group is one transaction and one hold of the writer instead of eight.

Only the plain case is applied together: a verified notice that pays a pending card-key order
in full whose reservation is whole, a trade not seen before. Each one gets exactly what it
would have had alone: the same checks (`notify.check_order`), the same guarded statements, the
same rows. Anything else (a rejection to record, a duplicate, an order paid after its
reservation lapsed, goods that are not card keys, a refund) is applied alone (`None`), and when
the group meets a surprise half-way (a trade or an order taken meanwhile, a reservation not
whole) the transaction is rolled back, nothing is written, and every notice is applied alone.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from kami import orders, payments, vault
from kami.fulfilment.delivering import record_delivered
from kami.fulfilment.notify import Checked, Outcome, check_notification, check_order
from kami.fulfilment.shop import Shop
from kami.kernel.clock import utcnow

# At most this many notifications in one group; the next to arrive starts another.
MAX_GROUP = 32


class _Alone(Exception):
    """The group cannot be applied as one: roll it back, and each is applied alone."""


_Member = tuple[int, payments.Gateway, payments.PaymentNotice]


def handle_notifications_together(
    shop: Shop, notes: Sequence[payments.RawNotification | Checked]
) -> list[Outcome | None]:
    """Apply the notifications together where each is the plain case; one outcome per
    notification, in order, None for each to be handled alone (`notify.handle_notification`).
    Each is a raw notification or one verified already (`notify.check_notification`): a group
    that found SQLite's writer busy runs again once it has it (decision 0023), and the server
    verifies each notification once, before it joins a group."""
    alone: list[Outcome | None] = [None] * len(notes)
    checked = [
        n if isinstance(n, Checked) else check_notification(shop, n) for n in notes[:MAX_GROUP]
    ]
    members = _verified(checked)
    if len(members) < 2:
        return alone
    outcomes = list(alone)
    try:
        with shop.db.write() as s:
            found = orders.find_orders(s, [notice.order_no for _, _, notice in members])
            ready: list[tuple[_Member, orders.OrderView]] = []
            for member, order in zip(members, found, strict=True):
                if order is None or order.status != orders.OrderStatus.PENDING:
                    continue  # a rejection, or a payment after the order lapsed: alone
                if order.delivery_kind != "card_key":
                    continue
                try:
                    check_order(order, member[2])
                except payments.NotificationRejected:
                    continue
                ready.append((member, order))
            if not ready:
                raise _Alone
            _apply_together(s, checked, ready)
    except _Alone:
        return alone
    for (i, gateway, notice), _ in ready:
        outcomes[i] = Outcome(
            gateway.acknowledge(None), payments.Verdict.ACCEPTED, None, notice.order_no, True
        )
    return outcomes


def _verified(checked: Sequence[Checked]) -> list[_Member]:
    """The notifications that verified as payments, one per trade and per order (a second
    notification of either in the group is applied alone, after the group)."""
    members: list[_Member] = []
    trades: set[tuple[str, str]] = set()
    order_nos: set[str] = set()
    for i, note in enumerate(checked):
        gateway, notice = note.gateway, note.notice
        if gateway is None or not isinstance(notice, payments.PaymentNotice):
            continue  # a rejection (recorded with its reason when applied alone), or a refund
        if notice.status is not payments.TradeStatus.PAID:
            continue
        trade = (notice.gateway, notice.trade_no)
        if trade in trades or notice.order_no in order_nos:
            continue
        trades.add(trade)
        order_nos.add(notice.order_no)
        members.append((i, gateway, notice))
    return members


def _apply_together(
    s: Session,
    checked: Sequence[Checked],
    ready: list[tuple[_Member, orders.OrderView]],
) -> None:
    """`notify._apply` for pending card-key orders (`delivering.pay_card_keys`), each
    statement once for all; raises _Alone to roll back."""
    paid = [(notice, order.id) for (_, _, notice), order in ready]
    if not all(payments.record_inbox_each(s, paid)):
        raise _Alone  # a trade applied before (or meanwhile): the duplicate's answer is alone's
    now = utcnow()
    paying = [(order.id, notice.trade_no) for (_, _, notice), order in ready]
    if not all(orders.pay_and_deliver_each(s, paying, now)):  # as `delivering.pay_card_keys`
        raise _Alone  # paid meanwhile by another trade
    keys = vault.sell_reserved_each(s, [(order.id, order.quantity) for _, order in ready], now)
    if keys is None:
        raise _Alone  # a reservation not whole: alone puts it back and takes fresh keys
    record_delivered(
        s, [(order, key_ids) for (_, order), key_ids in zip(ready, keys, strict=True)], now
    )
    for (i, _, notice), _ in ready:
        payments.record_notification(
            s,
            checked[i].raw,
            payments.Verdict.ACCEPTED,
            notice=notice,
            received_at=checked[i].received_at,
        )
