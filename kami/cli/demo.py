"""The demo catalog: what `make run` shows on an empty database."""

from __future__ import annotations

import secrets

from kami import catalog, fulfilment, vault

_ALPHA = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"

CATEGORIES = [
    ("video", "视频会员", None),
    ("tencent-video", "腾讯视频", "video"),
    ("iqiyi", "爱奇艺", "video"),
    ("games", "游戏点卡", None),
]

PRODUCTS = [
    catalog.ProductIn(
        slug="tencent-vip",
        category="tencent-video",
        name="腾讯视频 VIP",
        description="腾讯视频 VIP 会员，激活码兑换。",
        benefits=["院线新片抢先看", "会员专享剧集", "跳过广告"],
        validity_days=31,
        redemption="打开腾讯视频 App → 我的 → 会员中心 → 兑换码，输入卡密即可。",
    ),
    catalog.ProductIn(
        slug="iqiyi-gold",
        category="iqiyi",
        name="爱奇艺黄金会员",
        description="爱奇艺黄金 VIP 年卡。",
        benefits=["热剧抢先看", "免广告", "1080P 画质"],
        validity_days=365,
        redemption="登录爱奇艺 → 我的 → VIP 会员 → 激活码兑换，输入卡号与密码。",
    ),
    catalog.ProductIn(
        slug="netease-card",
        category="games",
        name="网易一卡通",
        description="网易游戏通用点卡。",
        benefits=["充值网易旗下游戏点数"],
        redemption="在网易一卡通官网或游戏内充值页面输入卡号和密码。",
    ),
]

SKUS = [
    catalog.SkuIn(
        code="TX-VIP-MONTH",
        product="tencent-vip",
        name="VIP 月卡",
        price_minor=2500,
        stock_display=catalog.StockDisplay.LEVEL,
        low_stock_threshold=5,
    ),
    catalog.SkuIn(
        code="IQY-GOLD-YEAR",
        product="iqiyi-gold",
        name="黄金会员年卡",
        price_minor=19800,
        stock_display=catalog.StockDisplay.EXACT,
        max_quantity=2,
    ),
    catalog.SkuIn(
        code="NETEASE-50",
        product="netease-card",
        name="50 元点卡",
        price_minor=4850,
        stock_display=catalog.StockDisplay.LEVEL,
    ),
]


def _code(groups: int = 4) -> str:
    return "-".join("".join(secrets.choice(_ALPHA) for _ in range(4)) for _ in range(groups))


def load_demo(shop: fulfilment.Shop, keys_per_sku: int = 20) -> bool:
    """Load the demo catalog and keys; False (and nothing done) if a catalog already exists."""
    with shop.db.write() as s:
        if not catalog.is_empty(s):
            return False
        for slug, name, parent in CATEGORIES:
            catalog.create_category(s, catalog.CategoryIn(slug=slug, name=name, parent=parent))
        for product in PRODUCTS:
            catalog.create_product(s, product)
        skus = [catalog.create_sku(s, sku) for sku in SKUS]
    for sku in skus:
        if sku.code == "NETEASE-50":
            rows: list[vault.GoodLine | vault.BadLine] = [
                vault.GoodLine(
                    n,
                    vault.Secret(_code(3), "".join(secrets.choice("0123456789") for _ in range(8))),
                )
                for n in range(1, keys_per_sku + 1)
            ]
        else:
            rows = [vault.GoodLine(n, vault.Secret(_code())) for n in range(1, keys_per_sku + 1)]
        fulfilment.import_and_serve(
            shop, sku.id, rows, vault.BatchInfo(supplier="demo", source_name="demo")
        )
    return True
