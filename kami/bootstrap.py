"""The composition root: the one place that turns settings into wired objects."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from importlib import resources
from zoneinfo import ZoneInfo

from sqlalchemy.exc import DBAPIError

from kami import accounts, delivery, fulfilment, licenses, payments, vault
from kami.config import Settings
from kami.gateway_config import configured_gateways
from kami.kernel.db import Database
from kami.kernel.engine import make_engine, normalise_url
from kami.kernel.errors import Unavailable
from kami.kernel.outbox import Handler
from kami.supplier_config import configured_suppliers

log = logging.getLogger("kami")

SANDBOX_SECRET = "sandbox"


@dataclass
class Container:
    settings: Settings
    shop: fulfilment.Shop

    @property
    def db(self) -> Database:
        return self.shop.db

    def job_handlers(self) -> dict[str, Handler]:
        shop = self.shop
        return {
            fulfilment.MAIL_JOB: lambda payload: fulfilment.send_order_mail(shop, payload),
            fulfilment.REFUND_JOB: lambda payload: fulfilment.refund_failed_line(shop, payload),
            fulfilment.UNSERVED_REFUND_JOB: lambda payload: fulfilment.refund_unserved(
                shop, payload
            ),
        }

    def close(self) -> None:
        self.shop.db.dispose()


def build_keyring(settings: Settings) -> vault.Keyring:
    env = settings.master_key.get_secret_value() if settings.master_key else None
    # Only the embedded default may mint its own key; a server database must be given one.
    return vault.load_keyring(env, settings.master_key_file, create=settings.is_sqlite)


def build_mailer(settings: Settings) -> delivery.Mailer | None:
    smtp = settings.smtp
    if not smtp.host:
        return None
    return delivery.SmtpMailer(
        delivery.SmtpSettings(
            host=smtp.host,
            port=smtp.port,
            username=smtp.username,
            password=smtp.password.get_secret_value() if smtp.password else None,
            sender=smtp.sender,
            sender_name=smtp.sender_name,
            security=smtp.security,
        )
    )


def build(settings: Settings) -> Container:
    channels = configured_gateways(settings)  # a misconfigured channel stops us before any I/O
    upstream = configured_suppliers(settings)  # so does a misconfigured supplier account
    # Each admission slot keeps up to two connections, and a nested transaction takes a third
    # from the pool (decision 0009); the pool (size + twice its size in overflow) must hold them.
    pool = max(10, settings.db_concurrency)
    db = Database(
        make_engine(settings.database_url, pool_size=pool), concurrency=settings.db_concurrency
    )
    cipher = vault.VaultCipher(build_keyring(settings))
    gateways = payments.GatewayRegistry()
    # Named secrets are made (on first start) here, in a write transaction: created lazily
    # inside a read, two concurrent first uses would collide on SQLite's lock upgrade.
    try:
        with db.write() as s:
            for name in (
                vault.FINGERPRINT_SECRET,
                fulfilment.ORDER_TOKEN_SECRET,
                fulfilment.WEBHOOK_SECRET,
                fulfilment.ORDER_SALT,
                fulfilment.LOOKUP_SECRET,
                fulfilment.DOWNLOAD_SECRET,
                accounts.TOTP_SECRET,
            ):
                cipher.named_secret(s, name)
            licenses.prepare_secrets(s, cipher)
            sandbox_secret = cipher.named_secret(s, SANDBOX_SECRET)
    except DBAPIError as exc:
        db.dispose()
        raise Unavailable(
            f"the database is not ready ({type(exc.orig).__name__}); run `kami db upgrade` first",
            where="KAMI_DATABASE_URL",
            slug="database-not-ready",
        ) from None
    if settings.sandbox_enabled:
        if settings.sandbox_secret:
            sandbox_secret = settings.sandbox_secret.get_secret_value().encode()

        def lookup(order_no: str) -> payments.PaymentNotice | None:
            with db.read() as s:
                return payments.find_sandbox_trade(s, order_no)

        def refund_book(request: payments.RefundRequest) -> payments.RefundResult:
            with db.write() as s:
                return payments.book_sandbox_refund(s, request)

        def refund_lookup(request: payments.RefundRequest) -> payments.RefundResult:
            with db.read() as s:
                return payments.find_sandbox_refund(s, request)

        gateways.register(
            payments.SandboxGateway(
                sandbox_secret,
                settings.base_url,
                lookup,
                refund_book=refund_book,
                refund_lookup=refund_lookup,
            )
        )
    for gateway in channels:
        gateways.register(gateway)
    shop = fulfilment.Shop(
        db=db,
        cipher=cipher,
        gateways=gateways,
        public_url=settings.base_url,
        order_ttl=timedelta(minutes=settings.order_ttl_minutes),
        mailer=build_mailer(settings),
        shop_name=settings.shop_name,
        timezone=ZoneInfo(settings.timezone),
        open_orders_per_buyer=settings.open_orders_per_buyer,
        open_orders_per_ip=settings.open_orders_per_ip,
        supplier_unknown_limit=settings.supplier_unknown_limit,
    )
    for supplier in upstream:
        shop.suppliers.register(supplier)
    return Container(settings, shop)


def migrate(settings: Settings, revision: str = "head") -> None:
    """Bring the schema to `revision` with the migrations shipped inside the package."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("kami") / "migrations"))
    cfg.attributes["database_url"] = normalise_url(settings.database_url)
    if settings.is_sqlite:
        path = settings.database_url.split("///", 1)[-1]
        if path and path != ":memory:":
            from pathlib import Path

            Path(path).parent.mkdir(parents=True, exist_ok=True)
    command.upgrade(cfg, revision)
