"""Files sold as downloads: delivered at payment as one item per unit; revealed as a signed
link that ends `link_minutes` after the reveal; each download counted against
`max_downloads`; the link dead once the item is taken back or the order refunded.

Refusals are distinct problems, checked cheapest first and before any byte is read: a link
that was not made by this shop (bad or missing signature) is 403; a link past its time, an
item downloaded as often as it may be, or an item taken back is 410.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from sqlalchemy.orm import Session

from kami import catalog, delivery, orders
from kami.catalog import DeliveryKind
from kami.fulfilment.shop import Shop
from kami.fulfilment.validity import valid_until
from kami.kernel.errors import Forbidden, InvalidInput, KamiError

log = logging.getLogger("kami.downloads")

DOWNLOAD_SECRET = "download-link"  # keys the links' HMAC signatures
# Orders whose downloads work: the same as those whose keys can be revealed.
_LIVE_ORDERS = frozenset({orders.OrderStatus.DELIVERED, orders.OrderStatus.PARTIALLY_REFUNDED})


class LinkRefused(Forbidden):
    slug = "download-link-invalid"
    title = "Invalid download link"


class LinkGone(KamiError):
    status = 410
    slug = "download-gone"
    title = "Download no longer available"


@dataclass(frozen=True, slots=True)
class DownloadLink:
    position: int
    name: str
    url: str
    expires_at: datetime
    downloads_left: int
    size: int


@dataclass(frozen=True, slots=True)
class DownloadGrant:
    """One counted download: the blob to stream and how to name it."""

    path: Path
    name: str
    content_type: str
    size: int
    downloads: int  # this one included
    max_downloads: int


def download_secret(shop: Shop) -> bytes:
    cached = shop.cipher.cached_secret(DOWNLOAD_SECRET)
    if cached is not None:
        return cached
    with shop.db.read() as s:
        return shop.cipher.named_secret(s, DOWNLOAD_SECRET)


def check_download_sku(s: Session, kind: str, config: dict[str, object] | None) -> None:
    """At SKU save: a download SKU must name a stored file (settings are checked already)."""
    if kind != DeliveryKind.DOWNLOAD:
        return
    file_id = str((config or {}).get("file", ""))
    if delivery.find_file(s, file_id) is None:
        raise InvalidInput(
            f"no stored file {file_id!r}: upload it with POST /api/admin/files and use the id "
            "it answers",
            where="delivery_config.file",
            slug="unknown-file",
        )


# -- at payment --------------------------------------------------------------------------------
def serve_download_line(
    s: Session, order: orders.OrderView, line: delivery.LineView, now: datetime
) -> bool:
    """Deliver a download line in the payment's transaction: one item per unit."""
    from kami.fulfilment.goods.lines import finish_line  # lines dispatches here

    sku = catalog.get_sku(s, line.sku_code)
    config = catalog.config_of(DeliveryKind.DOWNLOAD, sku.delivery_config)
    if delivery.find_file(s, config.file) is None:  # a seller's mistake, visible on the line
        return finish_line(s, line, delivery.LineStatus.FAILED, now, f"file {config.file} is gone")
    delivery.record_downloads(
        s,
        order.id,
        config.file,
        line.quantity,
        now,
        start=delivery.next_position(s, order.id),
        link_minutes=config.link_minutes,
        max_downloads=config.max_downloads,
        line_id=line.id,
        valid_until=valid_until(order.validity_days, now),
    )
    return finish_line(s, line, delivery.LineStatus.DELIVERED, now, f"{line.quantity} download(s)")


# -- what the buyer sees -----------------------------------------------------------------------
def download_names(s: Session, order_id: int) -> dict[int, str]:
    """The file's name for each download item of the order, by position."""
    return {p: d.file.name for p, d in delivery.order_downloads(s, order_id).items()}


def download_links(
    s: Session, shop: Shop, order_id: int, positions: set[int], now: datetime
) -> list[DownloadLink]:
    """Fresh signed links for the order's download items at `positions` (its live ones)."""
    found = delivery.order_downloads(s, order_id)
    if not found.keys() & positions:
        return []
    secret = shop.cipher.named_secret(s, DOWNLOAD_SECRET)
    base = shop.public_url.rstrip("/")
    out = []
    for position in sorted(found.keys() & positions):
        d = found[position]
        ends = now + timedelta(minutes=d.link_minutes)
        exp = int(ends.timestamp())
        out.append(
            DownloadLink(
                position,
                d.file.name,
                f"{base}/d/{d.token}?{delivery.link_query(secret, d.token, exp)}",
                ends,
                d.left,
                d.file.size,
            )
        )
    return out


# -- the download itself -----------------------------------------------------------------------
def open_download(
    shop: Shop,
    files_dir: Path,
    token: str,
    exp: int,
    sig: str,
    now: datetime,
    *,
    ip: str | None = None,
    user_agent: str | None = None,
) -> DownloadGrant:
    """Check the link and count the download; the caller streams `path`. Nothing is counted
    unless every check passed, and nothing is served unless it was counted."""
    if not delivery.signature_ok(download_secret(shop), token, exp, sig):
        raise LinkRefused(
            "this download link is not valid: open the order page again for a new one",
            where="sig",
        )
    if exp < now.timestamp():
        raise LinkGone(
            "this download link has expired: open the order page again for a new one",
            where="exp",
            slug="download-link-expired",
        )
    with shop.db.write() as s:
        found = delivery.find_download(s, token)
        if found is None:  # signed by us but unknown: its row is gone
            raise LinkGone("this download no longer exists", where="token", slug="download-gone")
        order = orders.find_order_by_id(s, found.order_id)
        if order is None or order.status not in _LIVE_ORDERS:
            raise LinkGone(
                "this order was refunded or is no longer delivered: its downloads ended",
                where="token",
                slug="download-withdrawn",
            )
        count = delivery.count_download(s, token, now, ip, user_agent)
        if count is None:
            item = delivery.get_item(s, found.order_id, found.position)
            if item is not None and item.revoked_at is None:  # live: the limit stopped it
                raise LinkGone(
                    f"this file was downloaded {found.max_downloads} times, as many as "
                    "allowed for it",
                    where="token",
                    slug="download-limit-reached",
                )
            raise LinkGone(
                "this item was taken back (refunded or replaced): its download ended",
                where="token",
                slug="download-withdrawn",
            )
        path = delivery.blob_path(files_dir, found.file.sha256)
        if not path.is_file():
            log.error(
                "download %s: file %s is missing from %s", found.file.id, path.name, files_dir
            )
            # Rolled back with the count: the buyer keeps their download for when it is back.
            raise LinkGone(
                "the file is missing on the server; the seller has been told",
                where="token",
                slug="download-file-missing",
            )
    return DownloadGrant(
        path, found.file.name, found.file.content_type, found.file.size, count, found.max_downloads
    )
