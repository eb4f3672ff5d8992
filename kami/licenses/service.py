"""Issuing, revealing and revoking license keys. Write operations never commit: the caller's
boundary (the notify transaction, a command, a request) does.

Keys are stored like vault keys (invariant 5): each issue gets its own data key (wrapped by the
master key, so `kami vault rotate` re-wraps it with the rest), the ciphertext is bound to the
key's fingerprint as associated data, and the fingerprint is an HMAC under a named secret of its
own. A database dump shows masks and ciphertext, never a key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from kami import vault
from kami.kernel.clock import utcnow
from kami.kernel.errors import InvalidInput, KamiError
from kami.licenses import keyformat
from kami.licenses.models import Activation, License
from kami.licenses.policy import get_policy
from kami.licenses.schemas import IssuedLicense, LicenseView, RevealedLicense
from kami.licenses.signing import PublicKey, Signer, signer_for
from kami.licenses.states import LicenseStatus

SIGNING_SECRET = "license-signing"
FINGERPRINT_SECRET = "license-fingerprint"
MAX_ISSUE = 1000
_ATTEMPTS = 3


# -- secrets -----------------------------------------------------------------------------------
def prepare_secrets(session: Session, cipher: vault.VaultCipher) -> None:
    """Create (first start) or load the signing and fingerprint secrets. Call it in a write
    transaction at start-up, so later reads never have to create them."""
    for name in (SIGNING_SECRET, FINGERPRINT_SECRET):
        cipher.named_secret(session, name)


def secrets_ready(cipher: vault.VaultCipher) -> bool:
    return all(cipher.cached_secret(n) is not None for n in (SIGNING_SECRET, FINGERPRINT_SECRET))


def signer(session: Session, cipher: vault.VaultCipher) -> Signer:
    return signer_for(cipher.named_secret(session, SIGNING_SECRET))


def public_key(session: Session, cipher: vault.VaultCipher) -> PublicKey:
    return signer(session, cipher).public_key


def fingerprint(session: Session, cipher: vault.VaultCipher, compact_key: str) -> bytes:
    return cipher.fingerprint(
        cipher.named_secret(session, FINGERPRINT_SECRET), vault.Secret(compact_key)
    )


def _compact(key: str) -> str:
    return key.replace(keyformat.SEPARATOR, "")


# -- issue ---------------------------------------------------------------------------------------
def issue(
    session: Session,
    cipher: vault.VaultCipher,
    sku_id: int,
    order_id: int | None,
    quantity: int,
    now: datetime | None = None,
) -> list[IssuedLicense]:
    """Generate `quantity` new keys under the SKU's policy and store them encrypted."""
    if not 1 <= quantity <= MAX_ISSUE:
        raise InvalidInput(f"quantity must be 1 to {MAX_ISSUE}, not {quantity}", where="quantity")
    now = now or utcnow()
    policy = get_policy(session, sku_id)
    expires_at = None if policy.validity_days is None else now + timedelta(policy.validity_days)
    data_key_id = cipher.new_data_key(session)
    aead = cipher.aead_for(session, data_key_id)
    fp_key = cipher.named_secret(session, FINGERPRINT_SECRET)
    issued: dict[bytes, tuple[int, str]] = {}  # fingerprint → (license id, mask), in key order
    for _ in range(_ATTEMPTS):
        # 70+ random bits a key: a repeat is astronomically rare, but the unique fingerprint
        # decides, and a repeated key is simply drawn again.
        keys: dict[bytes, str] = {}
        while len(keys) < quantity - len(issued):
            key = keyformat.generate(policy.pattern)
            fp = cipher.fingerprint(fp_key, vault.Secret(_compact(key)))
            if fp not in issued:
                keys[fp] = key
        rows = [
            {
                "sku_id": sku_id,
                "order_id": order_id,
                "data_key_id": data_key_id,
                "fingerprint": fp,
                "ciphertext": cipher.encrypt(aead, vault.Secret(key), fp),
                "masked": keyformat.mask(key),
                "product_code": policy.product_code,
                "activation_limit": policy.activation_limit,
                "status": LicenseStatus.ACTIVE,
                "issued_at": now,
                "expires_at": expires_at,
            }
            for fp, key in keys.items()
        ]
        insert = (
            postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert
        )
        stmt = (
            insert(License)
            .values(rows)
            .on_conflict_do_nothing(index_elements=[License.fingerprint])
            .returning(License.id, License.fingerprint)
        )
        ids = dict((fp, lid) for lid, fp in session.execute(stmt).tuples())
        for fp, key in keys.items():
            if fp in ids:
                issued[fp] = (ids[fp], keyformat.mask(key))
        if len(issued) == quantity:
            break
    else:  # pragma: no cover - needs the random source to repeat itself three times
        raise KamiError("could not draw unique license keys", where="licenses_license")
    return [
        IssuedLicense(
            license_id=lid,
            sku_id=sku_id,
            order_id=order_id,
            masked=masked,
            product_code=policy.product_code,
            activation_limit=policy.activation_limit,
            issued_at=now,
            expires_at=expires_at,
        )
        for lid, masked in sorted(issued.values())
    ]


def reveal(
    session: Session, cipher: vault.VaultCipher, license_ids: Sequence[int]
) -> list[RevealedLicense]:
    """Decrypt keys, in the order given. Callers must have authorised and recorded the reveal."""
    if not license_ids:
        return []
    rows = session.execute(
        select(
            License.id, License.data_key_id, License.ciphertext, License.fingerprint, License.masked
        ).where(License.id.in_(list(license_ids)))
    ).all()
    by_id = {r.id: r for r in rows}
    out = []
    for lid in license_ids:
        r = by_id.get(lid)
        if r is not None:
            secret = cipher.decrypt(session, r.data_key_id, r.ciphertext, r.fingerprint)
            out.append(RevealedLicense(lid, secret.card, r.masked))
    return out


def revoke(
    session: Session, license_ids: Sequence[int], reason: str, now: datetime | None = None
) -> int:
    """Revoke licenses (after a refund, or by the seller); returns how many changed. Already
    revoked ones are left as they were, so calling it twice is harmless."""
    reason = reason.strip()
    if not 1 <= len(reason) <= 200:
        raise InvalidInput("a reason of 1 to 200 characters is required", where="reason")
    if not license_ids:
        return 0
    result = session.execute(
        update(License)
        .where(License.id.in_(list(license_ids)), License.status == LicenseStatus.ACTIVE)
        .values(status=LicenseStatus.REVOKED, revoked_at=now or utcnow(), revoked_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


# -- reads ---------------------------------------------------------------------------------------
def _views(session: Session, where: object) -> list[LicenseView]:
    used = (
        select(Activation.license_id, func.count().label("used"))
        .where(Activation.deactivated_at.is_(None))
        .group_by(Activation.license_id)
        .subquery()
    )
    rows = session.execute(
        select(License, used.c.used)
        .outerjoin(used, used.c.license_id == License.id)
        .where(where)  # type: ignore[arg-type]
        .order_by(License.id)
    ).all()
    return [
        LicenseView(
            license_id=lic.id,
            sku_id=lic.sku_id,
            order_id=lic.order_id,
            masked=lic.masked,
            product_code=lic.product_code,
            status=lic.status,
            activation_limit=lic.activation_limit,
            activations_used=int(n or 0),
            issued_at=lic.issued_at,
            expires_at=lic.expires_at,
            revoked_at=lic.revoked_at,
            revoked_reason=lic.revoked_reason,
        )
        for lic, n in rows
    ]


def licenses_for_order(session: Session, order_id: int) -> list[LicenseView]:
    return _views(session, License.order_id == order_id)


def find_license(session: Session, cipher: vault.VaultCipher, key: str) -> LicenseView | None:
    """The license a pasted key belongs to, found by fingerprint (nothing is decrypted)."""
    compact = keyformat.compact(key)
    if compact is None:
        return None
    found = _views(session, License.fingerprint == fingerprint(session, cipher, compact))
    return found[0] if found else None
