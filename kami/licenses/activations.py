"""The seller's software's three calls: validate, activate, deactivate. Every answer is signed,
refusals included (they are raised as `LicenseRefused`, which carries the signed answer).

Seats under concurrency: `activate` locks the license row before it counts seats (SELECT … FOR
UPDATE on PostgreSQL; on SQLite the write transaction already holds the database's one writer
lock from BEGIN IMMEDIATE), so two activations of one license are serialised and the second
counts the first one's seat. The partial unique index on live (license, machine) pairs stands
behind the idempotency of "the same machine again".
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from kami import vault
from kami.kernel.clock import utcnow
from kami.kernel.errors import KamiError
from kami.licenses import keyformat
from kami.licenses.models import Activation, License
from kami.licenses.schemas import ActivationView, LicenseRequest
from kami.licenses.service import fingerprint, signer
from kami.licenses.signing import SignedAnswer, key_digest
from kami.licenses.states import REFUSALS, LicenseStatus, Refusal, Standing

PAYLOAD_VERSION = 1


class LicenseRefused(KamiError):
    """A refusal the client may trust offline: `answer` is signed like a success."""

    def __init__(self, refusal: Refusal, detail: str, answer: SignedAnswer, where: str) -> None:
        super().__init__(detail, where=where, slug=refusal.value)
        self.status, self.title = REFUSALS[refusal]
        self.answer = answer


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class _Call:
    """One request being answered: what goes into the signed payload."""

    session: Session
    cipher: vault.VaultCipher
    action: str
    request: LicenseRequest
    now: datetime
    license: License | None = None
    used: int | None = None
    machine_activated: bool = False

    def standing(self) -> Standing:
        lic = self.license
        if lic is None:
            return Standing.INVALID
        if lic.status == LicenseStatus.REVOKED:
            return Standing.REVOKED
        if lic.expires_at is not None and self.now >= lic.expires_at:
            return Standing.EXPIRED
        return Standing.ACTIVE

    def payload(self, ok: bool, result: str) -> dict[str, Any]:
        lic = self.license
        return {
            "v": PAYLOAD_VERSION,
            "action": self.action,
            "ok": ok,
            "result": result,
            "status": self.standing().value,
            "key_sha256": key_digest(self.request.license_key),
            "product_code": lic.product_code if lic else None,
            "machine_id": self.request.machine_id,
            "machine_activated": self.machine_activated,
            "activations_used": self.used,
            "activation_limit": lic.activation_limit if lic else None,
            "issued_at": _iso(lic.issued_at) if lic else None,
            "expires_at": _iso(lic.expires_at) if lic else None,
            "now": _iso(self.now),
            "nonce": self.request.nonce,
        }

    def answer(self, result: str) -> SignedAnswer:
        return signer(self.session, self.cipher).sign(self.payload(True, result))

    def refuse(self, refusal: Refusal, detail: str, where: str = "license_key") -> LicenseRefused:
        answer = signer(self.session, self.cipher).sign(self.payload(False, refusal.value))
        return LicenseRefused(refusal, detail, answer, where)

    # -- steps shared by the three calls -------------------------------------------------------
    def find(self, *, lock: bool) -> License:
        """The license, or the one refusal every unknown or malformed key gets."""
        compact = keyformat.compact(self.request.license_key)
        if compact is not None:  # garbage never reaches the database
            stmt = select(License).where(
                License.fingerprint == fingerprint(self.session, self.cipher, compact)
            )
            self.license = self.session.execute(
                stmt.with_for_update() if lock else stmt
            ).scalar_one_or_none()
        if self.license is None:
            raise self.refuse(Refusal.INVALID, "this license key is not valid")
        return self.license

    def check_standing(self) -> None:
        standing = self.standing()
        if standing is Standing.REVOKED:
            raise self.refuse(Refusal.REVOKED, "this license has been revoked")
        if standing is Standing.EXPIRED:
            raise self.refuse(Refusal.EXPIRED, "this license has expired")

    def seat(self, lic: License) -> Activation | None:
        return self.session.execute(
            select(Activation).where(
                Activation.license_id == lic.id,
                Activation.machine_id == self.request.machine_id,
                Activation.deactivated_at.is_(None),
            )
        ).scalar_one_or_none()

    def count_seats(self, lic: License) -> int:
        self.used = self.session.execute(
            select(func.count())
            .select_from(Activation)
            .where(Activation.license_id == lic.id, Activation.deactivated_at.is_(None))
        ).scalar_one()
        return self.used


def _validate(call: _Call) -> SignedAnswer:
    """May this machine run the product now? Read-only."""
    lic = call.find(lock=False)
    call.machine_activated = call.seat(lic) is not None
    call.count_seats(lic)
    call.check_standing()
    if not call.machine_activated:
        raise call.refuse(
            Refusal.NOT_ACTIVATED, "this machine is not activated for this license", "machine_id"
        )
    return call.answer("valid")


def _activate(call: _Call) -> SignedAnswer:
    """Take a seat for this machine; the same machine again keeps its one seat."""
    lic = call.find(lock=True)
    seat = call.seat(lic)
    call.machine_activated = seat is not None
    used = call.count_seats(lic)
    call.check_standing()
    if seat is not None:
        seat.last_seen_at = call.now
        return call.answer("already-activated")
    if used >= lic.activation_limit:
        raise call.refuse(
            Refusal.LIMIT_REACHED,
            f"all {lic.activation_limit} activations of this license are in use; deactivate "
            "another machine first",
            "machine_id",
        )
    call.session.add(
        Activation(
            license_id=lic.id,
            machine_id=call.request.machine_id,
            activated_at=call.now,
            last_seen_at=call.now,
        )
    )
    call.session.flush()
    call.machine_activated = True
    call.used = used + 1
    return call.answer("activated")


def _deactivate(call: _Call) -> SignedAnswer:
    """Free this machine's seat. Allowed for revoked and expired licenses too; idempotent."""
    lic = call.find(lock=True)
    freed = call.session.execute(
        update(Activation)
        .where(
            Activation.license_id == lic.id,
            Activation.machine_id == call.request.machine_id,
            Activation.deactivated_at.is_(None),
        )
        .values(deactivated_at=call.now)
        .execution_options(synchronize_session=False)
    ).rowcount  # type: ignore[attr-defined]
    call.count_seats(lic)
    return call.answer("deactivated" if freed else "not-activated")


def validate(
    session: Session,
    cipher: vault.VaultCipher,
    request: LicenseRequest,
    now: datetime | None = None,
) -> SignedAnswer:
    """May this machine run the product now? Read-only; raises LicenseRefused if not."""
    return _validate(_Call(session, cipher, "validate", request, now or utcnow()))


def activate(
    session: Session,
    cipher: vault.VaultCipher,
    request: LicenseRequest,
    now: datetime | None = None,
) -> SignedAnswer:
    """Take a seat for this machine (a write transaction); raises LicenseRefused if refused."""
    return _activate(_Call(session, cipher, "activate", request, now or utcnow()))


def deactivate(
    session: Session,
    cipher: vault.VaultCipher,
    request: LicenseRequest,
    now: datetime | None = None,
) -> SignedAnswer:
    """Free this machine's seat (a write transaction); raises LicenseRefused for a bad key."""
    return _deactivate(_Call(session, cipher, "deactivate", request, now or utcnow()))


def list_activations(session: Session, license_id: int) -> list[ActivationView]:
    rows = session.execute(
        select(Activation).where(Activation.license_id == license_id).order_by(Activation.id)
    ).scalars()
    return [
        ActivationView(a.machine_id, a.activated_at, a.last_seen_at, a.deactivated_at) for a in rows
    ]
