"""The license API a seller's software calls: validate, activate, deactivate, and the public key
that verifies every answer offline. Answers (refusals too) carry a signed payload; a 429 or a
malformed request (422) does not, and a client keeps its last signed answer through those."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from kami import fulfilment, licenses
from kami.web.deps import ShopDep, rate_limit
from kami.web.inputs import CheckedRoute
from kami.web.problems import PROBLEM, problem

router = APIRouter(prefix="/api/v1/licenses", tags=["licenses"], route_class=CheckedRoute)

RATE_LIMIT = "licenses"  # the rule's name in app.state.rate_limits (KAMI_RATE_LIMIT_LICENSES)


class SignedOut(BaseModel):
    payload: dict[str, Any]
    signature: str
    key_id: str


class PublicKeyOut(BaseModel):
    key_id: str
    algorithm: str
    public_key_pem: str
    public_key_base64: str


def _refusal_doc(description: str) -> dict[str, Any]:
    return {
        "description": description + " (problem+json with payload, signature and key_id)",
        "content": {PROBLEM: {}},
    }


REFUSALS: dict[int | str, dict[str, Any]] = {
    404: _refusal_doc("license-invalid: malformed, wrong checksum or unknown"),
    403: _refusal_doc("license-revoked, license-expired or machine-not-activated"),
    409: _refusal_doc("activation-limit-reached"),
}


def _ready(shop: fulfilment.Shop) -> None:
    """The signing and fingerprint secrets, made in a write transaction if this process has not
    loaded them yet (bootstrap does it at start), never lazily inside a read."""
    if not licenses.secrets_ready(shop.cipher):
        with shop.db.write() as s:
            licenses.prepare_secrets(s, shop.cipher)


def _answer(call: Callable[[], licenses.SignedAnswer]) -> Response:
    try:
        answer = call()
    except licenses.LicenseRefused as refusal:
        return problem(
            refusal.status,
            refusal.slug,
            refusal.title,
            refusal.detail,
            {"Cache-Control": "no-store"},
            where=refusal.where,
            **refusal.answer.body(),
        )
    return JSONResponse(answer.body(), headers={"Cache-Control": "no-store"})


@router.get("/public-key", response_model=PublicKeyOut)
def get_public_key(shop: ShopDep, response: Response) -> PublicKeyOut:
    """The Ed25519 key every answer is signed with: pin it in the client."""
    _ready(shop)
    with shop.db.read() as s:
        key = licenses.public_key(s, shop.cipher)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return PublicKeyOut(
        key_id=key.key_id,
        algorithm=key.algorithm,
        public_key_pem=key.pem,
        public_key_base64=key.raw_base64,
    )


@router.post("/validate", response_model=SignedOut, responses=REFUSALS)
def validate(body: licenses.LicenseRequest, request: Request, shop: ShopDep) -> Response:
    """May this machine run the product? Read-only."""
    rate_limit(request, RATE_LIMIT)
    _ready(shop)

    def call() -> licenses.SignedAnswer:
        with shop.db.read() as s:
            return licenses.validate(s, shop.cipher, body)

    return _answer(call)


@router.post("/activate", response_model=SignedOut, responses=REFUSALS)
def activate(body: licenses.LicenseRequest, request: Request, shop: ShopDep) -> Response:
    """Take a seat for this machine; the same machine again keeps its one seat."""
    rate_limit(request, RATE_LIMIT)
    _ready(shop)

    def call() -> licenses.SignedAnswer:
        with shop.db.write() as s:
            return licenses.activate(s, shop.cipher, body)

    return _answer(call)


@router.post("/deactivate", response_model=SignedOut, responses=REFUSALS)
def deactivate(body: licenses.LicenseRequest, request: Request, shop: ShopDep) -> Response:
    """Free this machine's seat (moving to another machine); idempotent."""
    rate_limit(request, RATE_LIMIT)
    _ready(shop)

    def call() -> licenses.SignedAnswer:
        with shop.db.write() as s:
            return licenses.deactivate(s, shop.cipher, body)

    return _answer(call)
