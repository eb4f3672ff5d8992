"""Several merchant accounts per channel from the accounts file: secrets only from files or
the environment, each problem named with its account, nothing secret ever printed."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import SecretStr
from typer.testing import CliRunner

from kami import bootstrap
from kami.cli.main import app
from kami.config import Settings
from kami.gateway_config import check_channels
from kami.kernel.errors import InvalidInput

US_KEY = "sk_live_US_SECRET_DO_NOT_PRINT"
EU_KEY = "sk_live_EU_SECRET_DO_NOT_PRINT"
HOOK = "whsec_HOOK_SECRET_DO_NOT_PRINT"


def write(tmp_path: Path, text: str) -> Path:
    (tmp_path / "us.key").write_text(US_KEY + "\n")
    (tmp_path / "hook").write_text(HOOK)
    path = tmp_path / "accounts.toml"
    path.write_text(text, encoding="utf-8")
    return path


GOOD = """
[stripe-us]
channel = "stripe"
secret_key_file = "us.key"          # relative to this file
webhook_secret_file = "hook"

[stripe-eu]
channel = "stripe"
secret_key_env = "EU_STRIPE_KEY"
webhook_secret_file = "hook"

[stripe-old]
channel = "stripe"
enabled = false
secret_key_env = "EU_STRIPE_KEY"
webhook_secret_file = "hook"
"""


def test_several_accounts_of_one_channel(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EU_STRIPE_KEY", EU_KEY)
    path = write(tmp_path, GOOD)
    configured = settings.model_copy(update={"payment_accounts_file": path})
    checks = check_channels(configured)
    assert [(c.name, c.channel, c.errors) for c in checks] == [
        ("stripe-us", "stripe", []),
        ("stripe-eu", "stripe", []),
        ("stripe-old", "stripe", []),
    ]
    container = bootstrap.build(configured)
    try:
        names = container.shop.gateways.names()
        assert names == ["sandbox", "stripe-eu", "stripe-us"]  # disabled: checked, not served
        assert container.shop.gateways.get("stripe-us").name == "stripe-us"
    finally:
        container.close()


BAD = """
[stripe-inline]
channel = "stripe"
secret_key = "sk_live_INLINE_SECRET"
webhook_secret_file = "hook"

[stripe-missing]
channel = "stripe"
secret_key_env = "NOT_SET_ANYWHERE"
webhook_secret_file = "nope/hook"
colour = "blue"

["Bad Name"]
channel = "stripe"

[paypal]
channel = "paypal"

[stripe-badkey]
channel = "stripe"
secret_key_file = "hook"
webhook_secret_file = "hook"
"""


def test_each_problem_is_named_with_its_account(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    checks = {
        c.name: c
        for c in check_channels(settings.model_copy(update={"payment_accounts_file": path}))
    }
    inline = checks["stripe-inline"].errors
    assert inline == [
        "secret_key: a secret must not be written in the accounts file; use "
        'secret_key_file = "path" or secret_key_env = "VARIABLE"',
    ]  # said once: not also "missing"
    missing = checks["stripe-missing"].errors
    assert "secret_key_env: environment variable NOT_SET_ANYWHERE is not set" in missing
    assert any(e.startswith("webhook_secret_file: ") and "does not exist" in e for e in missing)
    assert any(e.startswith("unknown option 'colour'") for e in missing)
    assert any("account name 'Bad Name'" in e for e in checks["Bad Name"].errors)
    assert checks["paypal"].errors == [
        "channel: 'paypal' is not one of alipay, epay, epay_v2, stripe, wechat"
    ]
    assert checks["stripe-badkey"].errors == [
        "secret_key: must be a secret (sk_…) or restricted (rk_…) key"
    ]
    with pytest.raises(InvalidInput) as exc:
        bootstrap.build(settings.model_copy(update={"payment_accounts_file": path}))
    assert "stripe-inline" in exc.value.detail and "kami gateways check" in exc.value.detail
    assert "INLINE_SECRET" not in exc.value.detail


def test_cli_check_prints_no_secret(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + BAD)
    result = CliRunner().invoke(
        app,
        ["gateways", "check"],
        env={"KAMI_PAYMENT_ACCOUNTS_FILE": str(path), "EU_STRIPE_KEY": EU_KEY, "COLUMNS": "200"},
    )
    assert result.exit_code == 2
    out = result.output
    assert "stripe-us: ok" in out and "stripe-inline: FAILED" in out
    assert "stripe-old: ok (disabled)" in out
    for secret in (US_KEY, EU_KEY, HOOK, "INLINE_SECRET"):
        assert secret not in out


def test_broken_toml_and_name_clash(settings: Settings, tmp_path: Path) -> None:
    path = write(tmp_path, '[a]\nchannel = "stripe\n')
    (check,) = check_channels(settings.model_copy(update={"payment_accounts_file": path}))
    assert check.errors[0].startswith("not valid TOML") and "line 2" in check.errors[0]
    path = write(
        tmp_path,
        '[stripe]\nchannel = "stripe"\nsecret_key_file = "us.key"\nwebhook_secret_file = "hook"\n',
    )
    clash = settings.model_copy(
        update={
            "payment_accounts_file": path,
            "stripe": settings.stripe.model_copy(
                update={"secret_key": SecretStr(US_KEY), "webhook_secret": SecretStr(HOOK)}
            ),
        }
    )
    checks = check_channels(clash)
    assert [c.source for c in checks] == ["KAMI_STRIPE__*", f"accounts file {path} [stripe]"]
    assert checks[1].errors == ["account name 'stripe' is also used by KAMI_STRIPE__*"]
    missing = settings.model_copy(update={"payment_accounts_file": tmp_path / "absent.toml"})
    assert check_channels(missing)[0].errors == ["the file does not exist"]
