"""A small shop whose texts, keys and buyer input are hostile: every page must show them as text."""

from __future__ import annotations

from dataclasses import dataclass

from kami import catalog, fulfilment, vault

# Runs if any page or script ever puts it into the DOM as HTML.
EVIL = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=1</script>'
EVIL_KEY = '<b id="evil">KEY-1234-5678</b>&amp;"quote"'
EVIL_INPUT = '"><svg onload="window.__pwned=1">'


@dataclass(frozen=True)
class Seeded:
    product_slug: str
    sku_code: str
    plain_slug: str
    plain_sku: str
    keys: list[str]


def seed_plain(shop: fulfilment.Shop) -> None:
    """What the screenshots show: an ordinary small shop."""
    with shop.db.write() as s:
        catalog.create_category(s, catalog.CategoryIn(slug="members", name="视频会员 Video"))
        catalog.create_product(
            s,
            catalog.ProductIn(
                slug="video-vip",
                category="members",
                name="视频 VIP 会员 / Video VIP",
                description="全站影视免广告，1080P 蓝光 / Ad-free films and series in 1080P",
                benefits=["免广告 / No ads", "1080P 蓝光 / 1080P", "2 台设备 / 2 devices"],
                validity_days=31,
                redemption=(
                    "打开 App → 我的 → 兑换码，粘贴卡密。\n"
                    "Open the app → Me → Redeem, paste the key."
                ),
            ),
        )
        skus = [
            ("VIP-MONTH", "月卡 / 1 month", 1990, catalog.StockDisplay.EXACT),
            ("VIP-YEAR", "年卡 / 12 months", 19800, catalog.StockDisplay.LEVEL),
        ]
        made = [
            catalog.create_sku(
                s,
                catalog.SkuIn(
                    code=code,
                    product="video-vip",
                    name=name,
                    price_minor=price,
                    currency="CNY",
                    stock_display=display,
                    low_stock_threshold=5,
                ),
            )
            for code, name, price, display in skus
        ]
    for sku in made:
        rows = [vault.GoodLine(n, vault.Secret(f"{sku.code}-{n:04d}-8F3K-Q2ZD")) for n in (1, 2, 3)]
        fulfilment.import_and_serve(shop, sku.id, rows, vault.BatchInfo())


def seed(shop: fulfilment.Shop) -> Seeded:
    with shop.db.write() as s:
        catalog.create_category(s, catalog.CategoryIn(slug="video", name="视频会员 " + EVIL))
        catalog.create_product(
            s,
            catalog.ProductIn(
                slug="evil-vip",
                category="video",
                name="VIP " + EVIL,
                description="desc " + EVIL,
                benefits=["benefit " + EVIL, "1080P"],
                validity_days=31,
                redemption="redeem " + EVIL,
            ),
        )
        evil = catalog.create_sku(
            s,
            catalog.SkuIn(
                code="EVIL-MONTH",
                product="evil-vip",
                name="Month " + EVIL,
                price_minor=1990,
                currency="CNY",
                max_quantity=5,
                stock_display=catalog.StockDisplay.EXACT,
                input_fields=[
                    {"name": "account", "label": "Account " + EVIL[:60], "rule": "text"},
                ],
            ),
        )
        catalog.create_product(
            s,
            catalog.ProductIn(
                slug="plain-card",
                category="video",
                name="Game card",
                validity_days=1,
                redemption="Enter the code in the game.",
            ),
        )
        plain = catalog.create_sku(
            s,
            catalog.SkuIn(
                code="GAME-50",
                product="plain-card",
                name="50 points",
                price_minor=500,
                currency="CNY",
                stock_display=catalog.StockDisplay.LEVEL,
                low_stock_threshold=1,
            ),
        )
    keys = [EVIL_KEY, "PLAIN-0001-0002-0003", "PLAIN-0004-0005-0006"]
    rows = [vault.GoodLine(1, vault.Secret(EVIL_KEY))]
    fulfilment.import_and_serve(shop, evil.id, rows, vault.BatchInfo())
    rows = [vault.GoodLine(n, vault.Secret(k)) for n, k in enumerate(keys[1:], start=1)]
    fulfilment.import_and_serve(shop, plain.id, rows, vault.BatchInfo())
    return Seeded("evil-vip", evil.code, "plain-card", plain.code, keys)
