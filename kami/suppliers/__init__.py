"""Upstream suppliers (直充 direct recharge and card purchase): the Supplier protocol and its
types, the Fulu, 大猿人 and generic signed-JSON adapters, and an in-process simulator."""

from kami.suppliers import dayuanren, fulu, generic
from kami.suppliers.base import (
    DEFAULT_TIMEOUT,
    MAX_RESPONSE,
    NOT_FOUND,
    CallbackRejected,
    Supplier,
    SupplierCallback,
    SupplierCard,
    SupplierOrderStatus,
    SupplierRegistry,
    SupplierRequest,
    SupplierResult,
    SupplierSpec,
)
from kami.suppliers.dayuanren import DayuanrenSupplier
from kami.suppliers.fulu import FuluSupplier
from kami.suppliers.generic import GenericSupplier
from kami.suppliers.sim import SimConfig, Simulator
from kami.suppliers.sim_ledger import Fate, SimAccount, SimProduct

SUPPLIER_SPECS: tuple[SupplierSpec, ...] = (fulu.SPEC, dayuanren.SPEC, generic.SPEC)

__all__ = [
    "DEFAULT_TIMEOUT",
    "MAX_RESPONSE",
    "NOT_FOUND",
    "SUPPLIER_SPECS",
    "CallbackRejected",
    "DayuanrenSupplier",
    "Fate",
    "FuluSupplier",
    "GenericSupplier",
    "SimAccount",
    "SimConfig",
    "SimProduct",
    "Simulator",
    "Supplier",
    "SupplierCallback",
    "SupplierCard",
    "SupplierOrderStatus",
    "SupplierRegistry",
    "SupplierRequest",
    "SupplierResult",
    "SupplierSpec",
    "dayuanren",
    "fulu",
    "generic",
]
