"""Settings from the environment (prefix KAMI_, nested delimiter __), built once at the entry."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class SmtpConfig(BaseModel):
    host: str | None = None
    port: int = 587
    username: str | None = None
    password: SecretStr | None = None
    sender: str = "shop@localhost"
    sender_name: str = "Kami"
    security: str = Field(default="starttls", pattern="^(starttls|ssl|none)$")


class StripeConfig(BaseModel):
    secret_key: SecretStr | None = None  # sk_… from Developers → API keys
    webhook_secret: SecretStr | None = None  # whsec_… of the webhook endpoint
    api_base: str = "https://api.stripe.com"


class EpayConfig(BaseModel):
    base_url: str | None = None  # the 易支付 site's address, https://…
    pid: str | None = None  # 商户ID
    key: SecretStr | None = None  # 商户密钥
    pay_type: str | None = None  # alipay, wxpay, qqpay …; unset lets the cashier ask
    refund: bool = False  # the site offers api.php?act=refund


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KAMI_", env_nested_delimiter="__", extra="ignore")

    database_url: str = "sqlite:///var/kami.db"
    # Transactions one server process runs at once (kami.kernel.admission.Admission); the others
    # wait without holding a connection. More only helps when the database is far away.
    db_concurrency: int = Field(default=4, ge=1, le=256)
    host: str = "127.0.0.1"
    port: int = 8000
    public_url: str | None = None
    master_key: SecretStr | None = None
    master_key_file: Path = Path("var/master.key")
    sandbox_enabled: bool = False
    sandbox_secret: SecretStr | None = None
    order_ttl_minutes: int = Field(default=15, ge=1, le=7 * 24 * 60)
    open_orders_per_buyer: int = Field(default=3, ge=1, le=10_000)
    open_orders_per_ip: int = Field(default=20, ge=1, le=1_000_000)
    # Proxies whose X-Forwarded-For is believed (comma-separated addresses, or "*"). Behind a
    # reverse proxy on another address, list it, or every buyer shares the proxy's address.
    forwarded_allow_ips: str = "127.0.0.1"
    redis_url: str | None = None
    redis_namespace: str = "kami"  # key prefix, so several shops can share one Redis
    rate_limit_orders: str = "30/minute"
    rate_limit_reveals: str = "60/minute"
    rate_limit_licenses: str = "120/minute"  # validate/activate/deactivate, per client address
    shop_name: str = "Kami"
    # The shop's time zone: the console and the storefront show times in it, the console reads
    # the times typed into it (a flash sale's window) in it, and the dashboard's days are its.
    timezone: str = "Asia/Shanghai"
    smtp: SmtpConfig = SmtpConfig()
    stripe: StripeConfig = StripeConfig()
    epay: EpayConfig = EpayConfig()
    # Merchant accounts, any number per channel (TOML, one table each): see docs/payments.md.
    payment_accounts_file: Path | None = None
    sync_after_minutes: float = Field(default=2, gt=0, description="ask the channel after")
    sync_every_minutes: float = Field(default=5, gt=0, description="and again this often")
    # An open refund (channel unreachable, or still processing) is asked about again after this.
    refund_sync_after_minutes: float = Field(default=1, gt=0)
    # Upstream supplier accounts (TOML, one table each): see docs/suppliers.md.
    supplier_accounts_file: Path | None = None
    # Calls to a supplier whose outcome stayed unknown before an order is left for a person.
    supplier_unknown_limit: int = Field(default=8, ge=1, le=1000)
    inprocess_worker: bool = True
    worker_poll_seconds: float = Field(default=1.0, gt=0)
    log_level: str = "INFO"
    # After-sales: a buyer's "key invalid / redemption failed" report is answered from stock at
    # once (`replace`, once per item) or queued for the seller's review (`review`). A SKU may
    # differ: KAMI_AFTERSALES_POLICY_BY_SKU='{"VIP-MONTH": "replace"}'.
    aftersales_policy: Literal["replace", "review"] = "review"
    aftersales_policy_by_sku: dict[str, Literal["replace", "review"]] = Field(default_factory=dict)
    # Goods with a validity period: the buyer is reminded this many days before it ends.
    validity_reminder_days: int = Field(default=3, ge=0, le=365)
    # Files sold as downloads: stored here under their SHA-256, never served from here directly.
    files_dir: Path = Path("var/files")
    files_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024, le=1 << 40)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value[:60]!r}; use a name like Asia/Shanghai or UTC"
            ) from None
        return value

    @property
    def base_url(self) -> str:
        return (self.public_url or f"http://{self.host}:{self.port}").rstrip("/")

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")
