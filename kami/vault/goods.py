"""Keys that are not sold one to a buyer: a reusable key (or text) sold many times, and goods
that arrive after payment (from the seller's webhook, an operator or a supplier), which are
kept encrypted like any key, sold to their order at once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from kami.kernel.errors import Conflict
from kami.kernel.ids import new_token
from kami.vault.cipher import Secret, VaultCipher, mask
from kami.vault.imports import FINGERPRINT_SECRET, BatchInfo
from kami.vault.models import KEY_AVAILABLE, Batch, Key
from kami.vault.states import NO_EXPIRY, KeyStatus


def shared_key(session: Session, sku_id: int, now: datetime) -> int | None:
    """The key a reusable SKU sells again and again: its oldest available, unexpired key."""
    return session.execute(
        select(Key.id)
        .where(Key.sku_id == sku_id, KEY_AVAILABLE, Key.expires_at > now)
        .order_by(Key.id)
        .limit(1)
    ).scalar_one_or_none()


def store_delivered(
    session: Session,
    cipher: VaultCipher,
    sku_id: int,
    order_id: int,
    goods: Sequence[Secret],
    info: BatchInfo,
    now: datetime,
) -> list[int]:
    """Goods that arrived for an order, encrypted into a batch of their own and sold to it.

    The same goods already in the vault for this SKU (a supplier handing out a card twice, a
    webhook answering another order's key) is refused: it would be sold twice.
    """
    fp_key = cipher.named_secret(session, FINGERPRINT_SECRET)
    fingerprints = [cipher.fingerprint(fp_key, g) for g in goods]
    if len(set(fingerprints)) != len(fingerprints):
        raise Conflict(
            "the same goods came twice in one delivery", where="goods", slug="duplicate-goods"
        )
    seen = session.execute(
        select(Key.id).where(Key.sku_id == sku_id, Key.fingerprint.in_(fingerprints))
    ).first()
    if seen is not None:
        raise Conflict(
            "these goods were already delivered or in stock: refusing to sell them twice",
            where="goods",
            slug="duplicate-goods",
        )
    dek_id = cipher.new_data_key(session)
    aead = cipher.aead_for(session, dek_id)
    batch = Batch(
        public_id=new_token(12),
        sku_id=sku_id,
        data_key_id=dek_id,
        supplier=info.supplier,
        unit_cost_minor=info.unit_cost_minor,
        cost_currency=info.cost_currency,
        expires_at=info.expires_at,
        source_name=info.source_name[:255],
        imported=len(goods),
        created_at=now,
    )
    session.add(batch)
    session.flush()
    keys = [
        Key(
            sku_id=sku_id,
            batch_id=batch.id,
            data_key_id=dek_id,
            fingerprint=fp,
            ciphertext=cipher.encrypt(aead, g, fp),
            masked=mask(g),
            status=KeyStatus.SOLD,
            expires_at=info.expires_at or NO_EXPIRY,
            order_id=order_id,
            sold_at=now,
            created_at=now,
        )
        for g, fp in zip(goods, fingerprints, strict=True)
    ]
    session.add_all(keys)
    session.flush()
    return [k.id for k in keys]
