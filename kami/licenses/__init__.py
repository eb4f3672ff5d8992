"""Generated software license keys: per-SKU policy, issue, activation seats, signed answers."""

from kami.licenses.activations import (
    LicenseRefused,
    activate,
    deactivate,
    list_activations,
    validate,
)
from kami.licenses.keyformat import ALPHABET, DEFAULT_PATTERN
from kami.licenses.policy import find_policy, get_policy, set_policy
from kami.licenses.schemas import (
    ActivationView,
    IssuedLicense,
    LicenseRequest,
    LicenseView,
    PolicyIn,
    PolicyView,
    RevealedLicense,
)
from kami.licenses.service import (
    FINGERPRINT_SECRET,
    SIGNING_SECRET,
    find_license,
    issue,
    licenses_for_order,
    prepare_secrets,
    public_key,
    reveal,
    revoke,
    secrets_ready,
)
from kami.licenses.signing import (
    PublicKey,
    SignatureInvalid,
    SignedAnswer,
    canonical,
    key_digest,
    verify_offline,
)
from kami.licenses.states import LicenseStatus, Refusal, Standing

__all__ = [
    "ALPHABET",
    "DEFAULT_PATTERN",
    "FINGERPRINT_SECRET",
    "SIGNING_SECRET",
    "ActivationView",
    "IssuedLicense",
    "LicenseRefused",
    "LicenseRequest",
    "LicenseStatus",
    "LicenseView",
    "PolicyIn",
    "PolicyView",
    "PublicKey",
    "Refusal",
    "RevealedLicense",
    "SignatureInvalid",
    "SignedAnswer",
    "Standing",
    "activate",
    "canonical",
    "deactivate",
    "find_license",
    "find_policy",
    "get_policy",
    "issue",
    "key_digest",
    "licenses_for_order",
    "list_activations",
    "prepare_secrets",
    "public_key",
    "reveal",
    "revoke",
    "secrets_ready",
    "set_policy",
    "validate",
    "verify_offline",
]
