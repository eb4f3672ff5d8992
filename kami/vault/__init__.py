"""Key vault: encrypted card keys, import with de-duplication, atomic claims."""

from kami.vault.cipher import Secret, VaultCipher, mask
from kami.vault.claims import (
    ClaimHints,
    claim_keys,
    has_stock,
    ready_reserve_keys_for,
    reserve_keys_for,
    stock_ask,
    take_keys,
)
from kami.vault.defects import (
    DEFECT_RESOLUTIONS,
    BatchDefects,
    DefectView,
    KeyOrigin,
    defect_rates,
    key_origins,
    list_defects,
    mark_defective,
)
from kami.vault.errors import KeyringError
from kami.vault.goods import shared_key, store_delivered
from kami.vault.imports import FINGERPRINT_SECRET, BatchInfo, ImportReport, import_keys
from kami.vault.keyring import Keyring, load_keyring
from kami.vault.queries import (
    BatchStock,
    KeyLocation,
    MaskedKey,
    count_available,
    find_key,
    masked_keys,
    master_key_usage,
    reveal_keys,
    stock_by_batch,
)
from kami.vault.rotation import rotate
from kami.vault.selling import (
    release_reserved,
    sell_reserved,
    sell_reserved_each,
    withdraw_sold,
)
from kami.vault.sources import BadLine, GoodLine, Progress, SourceFormat, open_rows
from kami.vault.states import KeyStatus

__all__ = [
    "DEFECT_RESOLUTIONS",
    "FINGERPRINT_SECRET",
    "BadLine",
    "BatchDefects",
    "BatchInfo",
    "BatchStock",
    "ClaimHints",
    "DefectView",
    "GoodLine",
    "ImportReport",
    "KeyLocation",
    "KeyOrigin",
    "KeyStatus",
    "Keyring",
    "KeyringError",
    "MaskedKey",
    "Progress",
    "Secret",
    "SourceFormat",
    "VaultCipher",
    "claim_keys",
    "count_available",
    "defect_rates",
    "find_key",
    "has_stock",
    "import_keys",
    "key_origins",
    "list_defects",
    "load_keyring",
    "mark_defective",
    "mask",
    "masked_keys",
    "master_key_usage",
    "open_rows",
    "ready_reserve_keys_for",
    "release_reserved",
    "reserve_keys_for",
    "reveal_keys",
    "rotate",
    "sell_reserved",
    "sell_reserved_each",
    "shared_key",
    "stock_ask",
    "stock_by_batch",
    "store_delivered",
    "take_keys",
    "withdraw_sold",
]
