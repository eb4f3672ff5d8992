"""Envelope encryption, the keyring, rotation, masking."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from pydantic import SecretStr
from sqlalchemy import text

from kami import bootstrap, fulfilment, vault
from kami.config import Settings
from kami.vault.keyring import load_keyring
from tests.conftest import add_keys, make_sku


@pytest.mark.parametrize(
    ("card", "password", "masked"),
    [
        ("ABCD-EFGH-WXYZ", None, "ABCD-****-WXYZ"),
        ("ABCD-EFGH-IJKL-WXYZ", None, "ABCD-****-****-WXYZ"),
        ("12345678", None, "12****78"),
        ("AB", None, "**"),
        ("CARD00001111", "PW123456", "CARD****1111 / ******"),
    ],
)
def test_mask(card: str, password: str | None, masked: str) -> None:
    assert vault.mask(vault.Secret(card, password)) == masked


def test_keyring_forms_and_errors(tmp_path: Path) -> None:
    k1, k2 = base64.b64encode(b"1" * 32).decode(), base64.b64encode(b"2" * 32).decode()
    assert load_keyring(k1, tmp_path / "x", create=False).keys == {1: b"1" * 32}
    ring = load_keyring(f"2:{k2},1:{k1}", tmp_path / "x", create=False)
    assert ring.current_version == 2
    for bad, message in [
        ("not base64!", "entry 1"),
        (base64.b64encode(b"short").decode(), "32 bytes"),
        (f"1:{k1},1:{k2}", "repeats version 1"),
    ]:
        with pytest.raises(vault.KeyringError) as exc:
            load_keyring(bad, tmp_path / "x", create=False)
        assert message in str(exc.value)
        assert k1 not in str(exc.value) and k2 not in str(exc.value)
    with pytest.raises(vault.KeyringError, match="no master key"):
        load_keyring(None, tmp_path / "missing.key", create=False)
    generated = load_keyring(None, tmp_path / "new.key", create=True)
    assert generated.generated and (tmp_path / "new.key").stat().st_mode & 0o777 == 0o600
    assert load_keyring(None, tmp_path / "new.key", create=False).keys == generated.keys


def test_rotation_rewraps_and_keeps_keys_readable(settings: Settings, tmp_path: Path) -> None:
    key_file = tmp_path / "master.key"
    s1 = settings.model_copy(update={"master_key": None, "master_key_file": key_file})
    # A server database never mints its own key; write one as an operator would.
    load_keyring(None, key_file, create=True)
    c = bootstrap.build(s1)
    try:
        sku = make_sku(c.shop)
        add_keys(c.shop, sku, ["ROTATE-ME-0001", "ROTATE-ME-0002"])
        with c.db.read() as s:
            before = vault.master_key_usage(s)
        assert set(before) == {1}
        new_version = c.shop.cipher.keyring.add_generated_version()
        assert vault.rotate(c.db, c.shop.cipher) == sum(before.values())
        with c.db.read() as s:
            assert vault.master_key_usage(s) == {new_version: sum(before.values())}
    finally:
        c.close()
    # A fresh process with only the new version (old line removed) still reads every key.
    lines = [ln for ln in key_file.read_text().splitlines() if ln.startswith(f"{new_version}:")]
    key_file.write_text("\n".join(lines) + "\n")
    c2 = bootstrap.build(s1)
    try:
        with c2.db.read() as s:
            ids = [i for (i,) in s.execute(text("SELECT id FROM vault_key ORDER BY id"))]
            secrets = vault.reveal_keys(s, c2.shop.cipher, ids)
        assert [x.card for x in secrets] == ["ROTATE-ME-0001", "ROTATE-ME-0002"]
    finally:
        c2.close()


def test_wrong_master_key_is_a_clear_error(settings: Settings, shop: fulfilment.Shop) -> None:
    sku = make_sku(shop)
    add_keys(shop, sku, ["SECRET-KEY-0001"])
    other = settings.model_copy(
        update={"master_key": SecretStr(base64.b64encode(b"z" * 32).decode())}
    )
    # Refused at start-up, before serving anything, and the message never shows key material.
    with pytest.raises(vault.KeyringError, match="wrong master key") as exc:
        bootstrap.build(other)
    assert base64.b64encode(b"z" * 32).decode() not in str(exc.value)


def test_tampered_ciphertext_is_detected(shop: fulfilment.Shop) -> None:
    sku = make_sku(shop)
    add_keys(shop, sku, ["KEY-A-000001", "KEY-B-000002"])
    with shop.db.write() as s:
        # Swap the two ciphertexts: each is bound to its own fingerprint, so both must fail.
        rows = s.execute(text("SELECT id, ciphertext FROM vault_key ORDER BY id")).all()
        s.execute(
            text("UPDATE vault_key SET ciphertext = :c WHERE id = :i"),
            {"c": rows[1][1], "i": rows[0][0]},
        )
    with shop.db.read() as s, pytest.raises(vault.KeyringError, match="integrity"):
        vault.reveal_keys(s, shop.cipher, [rows[0][0]])
