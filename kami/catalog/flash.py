"""Flash sales (秒杀): a window, a sale price, a total quota, a per-buyer limit."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from functools import cache
from types import SimpleNamespace
from typing import Any, cast

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy import BigInteger, Dialect, Table, and_, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kami.catalog.models import CURRENT_SALE, FlashSale, Sku
from kami.catalog.queries import sku_by_code_select, sku_row_view
from kami.catalog.schemas import SkuView
from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, InvalidInput, NotFound
from kami.kernel.money import MAX_MINOR
from kami.kernel.prepared import Prepared, shapes


class FlashSaleIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    starts_at: datetime
    ends_at: datetime
    price_minor: int = Field(ge=0, le=MAX_MINOR)
    per_buyer_limit: int = Field(default=1, ge=1, le=10_000)
    quota: int = Field(ge=1, le=10**9)
    reservation_minutes: int = Field(default=5, ge=1, le=60, description="time to pay")

    @model_validator(mode="after")
    def _window(self) -> FlashSaleIn:
        if self.starts_at.tzinfo is None or self.ends_at.tzinfo is None:
            raise ValueError("starts_at and ends_at need a timezone")
        try:  # stored in UTC, where 0001-01-01T00:00+14:00 does not exist
            for moment in (self.starts_at, self.ends_at):
                moment.astimezone(UTC)
        except OverflowError:
            raise ValueError("starts_at and ends_at must be in years 1 to 9999 in UTC") from None
        if self.ends_at <= self.starts_at:
            raise ValueError("ends_at must be after starts_at")
        return self


class FlashSaleView(BaseModel):
    id: int = Field(exclude=True)
    sku_id: int = Field(exclude=True)
    starts_at: datetime
    ends_at: datetime
    price_minor: int
    per_buyer_limit: int
    quota: int
    taken: int
    reservation_minutes: int


def _view(f: Any) -> FlashSaleView:
    return FlashSaleView(
        id=f.id,
        sku_id=f.sku_id,
        starts_at=f.starts_at,
        ends_at=f.ends_at,
        price_minor=f.price_minor,
        per_buyer_limit=f.per_buyer_limit,
        quota=f.quota,
        taken=f.taken,
        reservation_minutes=f.reservation_minutes,
    )


def set_flash_sale(session: Session, sku_code: str, data: FlashSaleIn) -> FlashSaleView:
    """Create or change the SKU's flash sale. A window that starts at or after the end of a sale
    that has ended is a new sale: its quota and its buyers' counts start from nothing, and the
    ended one is kept (superseded) for the orders placed in it. Any other window changes the
    current sale, whose units taken stay taken; but a sale that is selling cannot be moved to
    start after its own end (that would end it at once and carry what it sold into the next):
    the next sale is set once it has ended."""
    # The SKU's row first, locked (PostgreSQL; FOR NO KEY UPDATE, which checkouts inserting
    # orders of the SKU do not wait for): two admins setting its sale at once go one after
    # the other, and the second reads the sale as the first left it.
    sku_id = session.execute(
        select(Sku.id).where(Sku.code == sku_code).with_for_update(key_share=True)
    ).scalar_one_or_none()
    if sku_id is None:
        raise NotFound(f"no SKU with code {sku_code!r}", where="sku")
    now = utcnow()
    sale = session.execute(
        select(FlashSale).where(FlashSale.sku_id == sku_id, FlashSale.superseded_at.is_(None))
    ).scalar_one_or_none()
    if sale is not None and data.starts_at >= sale.ends_at:
        if sale.starts_at <= now < sale.ends_at:
            raise Conflict(
                f"the flash sale of {sku_code} is selling until "
                f"{sale.ends_at.isoformat(timespec='seconds')}; set the next one once it has "
                "ended, or give this one a window that overlaps its own",
                where="starts_at",
                slug="flash-sale-selling",
            )
        if sale.ends_at <= now:
            sale.superseded_at = now
            session.flush()  # before the new one: one current sale per SKU at any moment
            sale = None
    if sale is None:
        sale = FlashSale(sku_id=sku_id, taken=0, created_at=now)
        session.add(sale)
    elif data.quota < sale.taken:
        raise InvalidInput(
            f"{sale.taken} units are already taken; the quota cannot be lower", where="quota"
        )
    for name, value in data.model_dump().items():
        setattr(sale, name, value)
    try:
        session.flush()
    except IntegrityError:  # a first sale of the SKU set at the same moment by someone else
        raise Conflict(
            f"the flash sale of {sku_code} was set by someone else at the same moment; read it "
            "and try again",
            where="sku",
            slug="flash-sale-changed",
        ) from None
    return _view(sale)


_F = cast(Table, FlashSale.__table__)

# A checkout reads its SKU and the SKU's flash sale in one statement (one round trip fewer on
# PostgreSQL): the SKU's columns as `catalog.queries` reads them, the sale's prefixed "sale_".
_SALE_COLUMNS = tuple(c.label(f"sale_{c.name}") for c in _F.c)
# Only the SKU's current sale is joined (models.CURRENT_SALE, the condition of its unique
# index, written as the same literal so that both databases use that index).
_ON_CURRENT_SALE = and_(_F.c.sku_id == Sku.__table__.c.id, CURRENT_SALE)
_SKU_AND_SALE = Prepared(
    sku_by_code_select().add_columns(*_SALE_COLUMNS).outerjoin(_F, _ON_CURRENT_SALE)
)


# The same, taking PostgreSQL advisory locks as it reads the SKU's row: a checkout's first
# statement also takes its buyer's locks (`orders.buyer_lock_keys`), one round trip fewer.
# PostgreSQL computes a SELECT's list in order, so the locks are taken in the order given; with
# no SKU there is no row and no lock.
def _advisory_locks(n: int) -> list[Any]:
    """`n` PostgreSQL transaction advisory locks as SELECT columns, keys bound as k0, k1 …"""
    return [func.pg_advisory_xact_lock(bindparam(f"k{i}", type_=BigInteger)) for i in range(n)]


def _lock_params(params: dict[str, object], locks: Sequence[int]) -> dict[str, object]:
    """`params` with the lock keys of `_advisory_locks` bound, in the order given."""
    params.update((f"k{i}", k) for i, k in enumerate(locks))
    return params


@cache
def _sku_and_sale_locking(n: int) -> Prepared:
    locks = _advisory_locks(n)
    return Prepared(
        sku_by_code_select().add_columns(*_SALE_COLUMNS, *locks).outerjoin(_F, _ON_CURRENT_SALE)
    )


def ready_sku_and_sale_locking(dialect: Dialect, most: int) -> None:
    """Compile the locking read for 1, 2, 4 … `most` locks now, not on first use."""
    for n in shapes(most):
        _sku_and_sale_locking(n).ready(dialect)


def find_sku_on_sale(
    session: Session, code: str, *, locks: Sequence[int] = ()
) -> tuple[SkuView, FlashSaleView | None] | None:
    """The SKU of this code and its flash sale (None: it has none); None if there is no SKU.

    `locks`: PostgreSQL advisory lock keys to take, in this order, for the rest of the
    transaction, in the same statement; only if the SKU exists. Read before the locks are
    granted (the statement's snapshot is taken when it starts)."""
    if locks:
        params = _lock_params({"code": code}, locks)
        row = _sku_and_sale_locking(len(locks)).run(session, params).first()
    else:
        row = _SKU_AND_SALE.run(session, {"code": code}).first()
    if row is None:
        return None
    sale = None
    if row.sale_id is not None:
        sale = _view(SimpleNamespace(**{c.name: getattr(row, f"sale_{c.name}") for c in _F.c}))
    return sku_row_view(row), sale


def flash_sale_codes(session: Session, now: datetime) -> frozenset[str]:
    """The codes of the SKUs with a flash sale that has not ended."""
    rows = session.execute(
        select(Sku.code)
        .join(FlashSale, FlashSale.sku_id == Sku.id)
        .where(FlashSale.ends_at > now, CURRENT_SALE)
    )
    return frozenset(rows.scalars())


def get_sku_on_sale(
    session: Session, code: str, *, locks: Sequence[int] = ()
) -> tuple[SkuView, FlashSaleView | None]:
    found = find_sku_on_sale(session, code, locks=locks)
    if found is None:
        raise NotFound(f"no SKU with code {code!r}", where="sku")
    return found


# A sale by its id (the one an order was placed in, current or not), with PostgreSQL advisory
# locks taken in the same statement as `_sku_and_sale_locking` takes them.
@cache
def _sale_locking(n: int) -> Prepared:
    return Prepared(select(*_F.c, *_advisory_locks(n)).where(_F.c.id == bindparam("sale_id")))


def find_flash_sale(
    session: Session, sale_id: int, *, locks: Sequence[int] = ()
) -> FlashSaleView | None:
    """The flash sale of this id, current or superseded; None if there is none. `locks`: as
    `find_sku_on_sale`'s, taken in the same statement, only if the sale exists."""
    params = _lock_params({"sale_id": sale_id}, locks)
    row = _sale_locking(len(locks)).run(session, params).first()
    return None if row is None else _view(row)


_TAKE_QUOTA = Prepared(
    update(_F)
    .where(_F.c.id == bindparam("sale_id"), _F.c.taken + bindparam("n") <= _F.c.quota)
    .values(taken=_F.c.taken + bindparam("n"))
)


def take_quota(session: Session, sale_id: int, quantity: int) -> bool:
    """Hold `quantity` units of the quota; False (nothing held) if that would pass the quota."""
    return bool(_TAKE_QUOTA.run(session, {"sale_id": sale_id, "n": quantity}).rowcount)


def give_back_quota(session: Session, sale_id: int, quantity: int) -> None:
    session.execute(
        update(FlashSale)
        .where(FlashSale.id == sale_id, FlashSale.taken >= quantity)
        .values(taken=FlashSale.taken - quantity)
        .execution_options(synchronize_session=False)
    )
