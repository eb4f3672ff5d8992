"""What buyers and admins see of an order, and the authorised reveal of its keys."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from kami import delivery, licenses, orders, payments, vault
from kami.fulfilment.shop import Shop
from kami.kernel import outbox, waiting
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, Unauthorized


@dataclass(frozen=True, slots=True)
class BuyerItem:
    position: int
    masked: str
    valid_until: datetime | None = None  # goods with a validity period end then
    kind: str = "key"  # "key" (keys, texts, licenses) or "download" (masked is the file name)


@dataclass(frozen=True, slots=True)
class RevealedItem:
    position: int
    card: str  # for a download: its signed link
    password: str | None
    kind: str = "key"
    name: str | None = None  # a download's file name
    expires_at: datetime | None = None  # when a download's link ends
    downloads_left: int | None = None


@dataclass(frozen=True, slots=True)
class TimelineEntry:
    at: datetime
    event: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class AdminOrderDetail:
    order: orders.OrderView
    items: list[BuyerItem]
    notifications: list[payments.NotificationView]
    reveals: list[delivery.RevealView]
    jobs: list[outbox.JobView]
    timeline: list[TimelineEntry]
    refunds: list[payments.RefundView] = field(default_factory=list)
    lines: list[delivery.LineView] = field(default_factory=list)


# A partly refunded order still holds the keys the seller did not withdraw.
REVEALABLE = frozenset({orders.OrderStatus.DELIVERED, orders.OrderStatus.PARTIALLY_REFUNDED})


def authorise(shop: Shop, order_no: str, token: str | None) -> None:
    """Checked before touching the database: a wrong token learns nothing, not even existence."""
    if not token or not orders.check_access_token(shop.token_secret(), order_no, token):
        raise Unauthorized(
            "missing or invalid order access token",
            where="Authorization",
            slug="invalid-order-token",
        )


def buyer_view(
    shop: Shop, order_no: str, token: str | None
) -> tuple[orders.OrderView, list[BuyerItem]]:
    authorise(shop, order_no, token)
    with shop.db.read() as s:
        order = orders.get_order(s, order_no)
        return order, _items(s, order.id)


def _items(s: Session, order_id: int) -> list[BuyerItem]:
    """The items the order holds now, numbered as delivered (a withdrawn one leaves a gap)."""
    from kami.fulfilment.goods.downloads import download_names  # goods imports views

    live = delivery.live_items(s, order_id)
    keys = vault.masked_keys(s, [i.key_id for i in live if i.key_id is not None])
    masked_keys = iter(keys)
    # Each kind is looked up only when the order holds one: the order page polls this view.
    lic = (
        {v.license_id: v.masked for v in licenses.licenses_for_order(s, order_id)}
        if any(i.license_id is not None for i in live)
        else {}
    )
    bare = any(i.key_id is None and i.license_id is None for i in live)
    files = download_names(s, order_id) if bare else {}
    out = []
    for i in live:
        if i.key_id is not None:
            out.append(BuyerItem(i.position, next(masked_keys).masked, i.valid_until))
        elif i.license_id is not None:
            out.append(BuyerItem(i.position, lic.get(i.license_id, ""), i.valid_until))
        elif i.position in files:
            out.append(BuyerItem(i.position, files[i.position], i.valid_until, "download"))
    return out


_Revealed = tuple[orders.OrderView, list[delivery.LiveItem], list[RevealedItem], set[int]]


def reveal(
    shop: Shop, order_no: str, token: str | None, *, ip: str | None, user_agent: str | None
) -> tuple[orders.OrderView, list[RevealedItem]]:
    from kami.fulfilment.goods.downloads import download_links  # goods imports views

    authorise(shop, order_no, token)
    # The reveal is recorded in the transaction that reads what leaves, or one that checks it
    # still holds, and commits before any key leaves: a reveal not recorded returns nothing.
    # SQLite: read and decrypted before the writer is asked for (its writer is the whole
    # database's; decrypting while holding it kept every checkout and payment waiting), and
    # kept if the call is refused for it and runs again (decision 0025). That read may be as
    # old as the wait for the writer, on the loop or on a thread, so under the writer the
    # order is checked to be revealable still and to hold the same items; else it is read
    # again there (refunded, restocked or replaced meanwhile). PostgreSQL: read in the write
    # transaction itself, in as many round trips as apart, with no wait between the read and
    # the record.
    kept: _Revealed | None = None
    if shop.db.dialect == "sqlite":
        kept, _ = waiting.read_once(("revealed", order_no), lambda: _read_revealed(shop, order_no))
    now = utcnow()
    with shop.db.write() as s:
        if kept is None or not _still_holds(s, kept[0].id, kept[1]):
            kept = _revealed(s, shop, order_no)
        order, _, items, bare = kept
        delivery.record_reveal(s, order.id, now, ip, user_agent)
        links = download_links(s, shop, order.id, bare, now) if bare else []
    items = items + [
        RevealedItem(d.position, d.url, None, "download", d.name, d.expires_at, d.downloads_left)
        for d in links
    ]
    return order, sorted(items, key=lambda r: r.position)


def _read_revealed(shop: Shop, order_no: str) -> _Revealed:
    with shop.db.read() as s:
        return _revealed(s, shop, order_no)


def _still_holds(s: Session, order_id: int, live: list[delivery.LiveItem]) -> bool:
    """Whether the order is still revealable and holds the items it held when read."""
    return orders.status_of(s, order_id) in REVEALABLE and delivery.live_items(s, order_id) == live


def _revealed(s: Session, shop: Shop, order_no: str) -> _Revealed:
    """The order, its live items, their keys and licenses decrypted, and the positions of its
    downloads."""
    order = orders.get_order(s, order_no)
    if order.status not in REVEALABLE:
        raise Conflict(
            f"order {order_no} is {order.status}; keys can be revealed once it is delivered",
            where="order_no",
            slug="not-delivered",
        )
    live = delivery.live_items(s, order.id)
    keyed = [i for i in live if i.key_id is not None]
    secrets = vault.reveal_keys(s, shop.cipher, [i.key_id for i in keyed if i.key_id])
    licensed = [i for i in live if i.license_id is not None]
    plain = licenses.reveal(s, shop.cipher, [i.license_id for i in licensed if i.license_id])
    items = [
        RevealedItem(i.position, x.card, x.password) for i, x in zip(keyed, secrets, strict=True)
    ]
    items += [RevealedItem(i.position, x.key, None) for i, x in zip(licensed, plain, strict=True)]
    bare = {i.position for i in live if i.key_id is None and i.license_id is None}
    return order, live, items, bare


def admin_detail(shop: Shop, order_no: str) -> AdminOrderDetail:
    with shop.db.read() as s:
        order = orders.get_order(s, order_no)
        items = _items(s, order.id)
        notes = payments.list_notifications(s, order_no=order_no)
        refunds = payments.list_refunds(s, order.id)
        lines = delivery.order_lines(s, order.id)
        line_events = delivery.line_events(s, order.id)
        reveals = delivery.list_reveals(s, order.id)
        jobs = outbox.list_jobs(s, ref=order_no)
        reports = delivery.list_reports(s, order_id=order.id)
    timeline = [TimelineEntry(order.created_at, "created", {"amount_minor": order.amount_minor})]
    timeline += [
        TimelineEntry(
            n.received_at,
            f"notification_{n.verdict}",
            {"gateway": n.gateway, "trade_no": n.trade_no, "reason": n.reason},
        )
        for n in notes
    ]
    if order.paid_at:
        timeline.append(TimelineEntry(order.paid_at, "paid", {"trade_no": order.trade_no}))
    if order.delivered_at:
        timeline.append(TimelineEntry(order.delivered_at, "keys_claimed", {"count": len(items)}))
    timeline += [TimelineEntry(r.revealed_at, "revealed", {"ip": r.ip}) for r in reveals]
    timeline += [
        TimelineEntry(
            j.finished_at or j.created_at,
            f"job_{j.status}",
            {"kind": j.kind, "event": j.payload.get("event"), "error": j.last_error},
        )
        for j in jobs
    ]
    for e in line_events:
        name = e.event if e.event.startswith("line_") else f"line_{e.event}"
        timeline.append(TimelineEntry(e.at, name, {"line": e.position, "detail": e.detail}))
    for r in refunds:
        info = {"refund_no": r.refund_no, "amount_minor": r.amount_minor, "origin": r.origin}
        timeline.append(
            TimelineEntry(r.created_at, "refund_requested", info | {"reason": r.reason})
        )
        if r.settled_at is not None:
            extra = {"keys": r.keys, "detail": r.detail}
            timeline.append(TimelineEntry(r.settled_at, f"refund_{r.status.value}", info | extra))
    for rep in reports:
        about = {"report_no": rep.report_no, "position": rep.position}
        timeline.append(
            TimelineEntry(
                rep.created_at,
                "aftersales_reported",
                about | {"problem": rep.problem, "note": rep.note, "review": rep.review_reason},
            )
        )
        if rep.resolved_at is not None:
            outcome = {
                "resolution": rep.resolution,
                "by": rep.resolved_by,
                "note": rep.resolution_note,
                "replacement_position": rep.replacement_position,
                "refund_no": rep.refund_no,
                "refund_minor": rep.refund_minor,
            }
            timeline.append(
                TimelineEntry(rep.resolved_at, f"aftersales_{rep.status.value}", about | outcome)
            )
    if order.status == orders.OrderStatus.EXPIRED:
        timeline.append(TimelineEntry(order.expires_at, "expired"))
    timeline.sort(key=lambda e: e.at)
    return AdminOrderDetail(order, items, notes, reveals, jobs, timeline, refunds, lines)
