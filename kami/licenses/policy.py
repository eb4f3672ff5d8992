"""A SKU's license policy: key pattern, activation limit, validity, product code."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kami.kernel.clock import utcnow
from kami.kernel.errors import Conflict, NotFound
from kami.licenses.models import Policy
from kami.licenses.schemas import PolicyIn, PolicyView


def _view(p: Policy) -> PolicyView:
    return PolicyView(
        sku_id=p.sku_id,
        pattern=p.pattern,
        activation_limit=p.activation_limit,
        validity_days=p.validity_days,
        product_code=p.product_code,
        created_at=p.created_at,
        updated_at=p.updated_at,
    )


def set_policy(
    session: Session, sku_id: int, data: PolicyIn, *, now: datetime | None = None
) -> PolicyView:
    """Create or replace the policy of a SKU. Licenses already issued keep the limit, validity
    and product code they were issued with."""
    now = now or utcnow()
    row = session.execute(
        select(Policy).where(Policy.sku_id == sku_id).with_for_update()
    ).scalar_one_or_none()
    if row is None:
        row = Policy(sku_id=sku_id, created_at=now)
    row.pattern = data.pattern
    row.activation_limit = data.activation_limit
    row.validity_days = data.validity_days
    row.product_code = data.product_code
    row.updated_at = now
    try:
        with session.begin_nested():  # the foreign key says whether the SKU exists
            session.add(row)
            session.flush()
    except IntegrityError:
        if find_policy(session, sku_id) is not None:
            raise Conflict(
                f"the policy of SKU {sku_id} was set at the same moment; try again",
                where="sku_id",
            ) from None
        raise NotFound(f"no SKU with id {sku_id}", where="sku_id") from None
    return _view(row)


def find_policy(session: Session, sku_id: int) -> PolicyView | None:
    row = session.execute(select(Policy).where(Policy.sku_id == sku_id)).scalar_one_or_none()
    return None if row is None else _view(row)


def get_policy(session: Session, sku_id: int) -> PolicyView:
    policy = find_policy(session, sku_id)
    if policy is None:
        raise NotFound(
            f"SKU {sku_id} has no license policy; set one before selling licenses",
            where="sku_id",
            slug="license-policy-missing",
        )
    return policy
