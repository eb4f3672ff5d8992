"""`kami gateways check`: each misconfiguration named, no secret ever printed; start-up refuses."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from kami import bootstrap
from kami.cli.main import app
from kami.config import Settings
from kami.kernel.errors import InvalidInput

runner = CliRunner()
SECRET_KEY = "sk_live_DO_NOT_PRINT_ME_123"


def check(env: dict[str, str]) -> tuple[int, str]:
    result = runner.invoke(app, ["gateways", "check"], env={"COLUMNS": "200", **env})
    return result.exit_code, result.output


def test_good_configuration() -> None:
    code, out = check(
        {
            "KAMI_STRIPE__SECRET_KEY": SECRET_KEY,
            "KAMI_STRIPE__WEBHOOK_SECRET": "whsec_abc",
            "KAMI_EPAY__BASE_URL": "https://pay.example",
            "KAMI_EPAY__PID": "1001",
            "KAMI_EPAY__KEY": "k" * 32,
        }
    )
    assert code == 0, out
    assert "stripe: ok" in out and "epay: ok" in out
    assert SECRET_KEY not in out and "k" * 32 not in out


def test_each_problem_is_named() -> None:
    code, out = check(
        {
            "KAMI_STRIPE__SECRET_KEY": "pk_live_publishable_not_secret",
            "KAMI_STRIPE__WEBHOOK_SECRET": "whsec_abc",
            "KAMI_EPAY__BASE_URL": "http://pay.example",
            "KAMI_EPAY__PID": "1001",
            "KAMI_SANDBOX_ENABLED": "true",
        }
    )
    assert code == 2
    assert "stripe: FAILED" in out and "secret (sk_…) or restricted (rk_…) key" in out
    assert "epay: FAILED" in out and "KAMI_EPAY__KEY is missing" in out
    assert "never on a live shop" in out
    assert "pk_live_publishable_not_secret" not in out
    code, out = check(
        {"KAMI_EPAY__BASE_URL": "http://pay.example", "KAMI_EPAY__PID": "1", "KAMI_EPAY__KEY": "x"}
    )
    assert code == 0 and "not https" in out


def test_start_up_refuses_a_broken_channel(settings: Settings) -> None:
    from pydantic import SecretStr

    from kami.config import StripeConfig

    broken = settings.model_copy(update={"stripe": StripeConfig(secret_key=SecretStr(SECRET_KEY))})
    with pytest.raises(InvalidInput) as exc:
        bootstrap.build(broken)
    assert "KAMI_STRIPE__WEBHOOK_SECRET is missing" in str(exc.value)
    assert SECRET_KEY not in str(exc.value)
