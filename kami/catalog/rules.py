"""Pure catalog rules: how stock is shown to buyers."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel

from kami.catalog.goods import DeliveryKind

__all__ = ["DeliveryKind"]


class StockDisplay(StrEnum):
    EXACT = "exact"
    LEVEL = "level"
    HIDDEN = "hidden"


class StockLevel(StrEnum):
    PLENTY = "plenty"  # 充足
    LOW = "low"  # 少量
    OUT = "out"  # 缺货


LEVEL_LABELS_ZH = {StockLevel.PLENTY: "充足", StockLevel.LOW: "少量", StockLevel.OUT: "缺货"}


class DisplayedStock(BaseModel):
    mode: StockDisplay
    available: bool
    count: int | None = None
    level: StockLevel | None = None
    label: str | None = None


def stock_level(count: int, threshold: int) -> StockLevel:
    if count <= 0:
        return StockLevel.OUT
    if count <= threshold:
        return StockLevel.LOW
    return StockLevel.PLENTY


def display_stock(mode: StockDisplay, count: int, threshold: int) -> DisplayedStock:
    """What a buyer may see: never more than the seller chose to show."""
    level = stock_level(count, threshold)
    available = count > 0
    if mode is StockDisplay.EXACT:
        return DisplayedStock(mode=mode, available=available, count=max(count, 0))
    if mode is StockDisplay.LEVEL:
        return DisplayedStock(
            mode=mode, available=available, level=level, label=LEVEL_LABELS_ZH[level]
        )
    return DisplayedStock(mode=mode, available=available)
