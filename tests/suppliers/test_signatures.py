"""The signatures and the card cipher, pinned to the reference's verified vectors (§5) and to
the sample ciphertexts published with Fulu's sandbox credentials."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from kami.suppliers import dayuanren, fulu, generic

# Verbatim from the reference (§5.1), verified there as Python == PHP json_encode($p, 320).
FULU_VECTOR = (
    '{"app_key":"TEST_APP_KEY","method":"fulu.order.direct.add","timestamp":"2026-07-19 14:10:44",'
    '"version":"2.0","format":"json","charset":"utf-8","sign_type":"md5","app_auth_token":"",'
    '"biz_content":"{\\"product_id\\":10000001,\\"customer_order_no\\":\\"FK20260719000001\\",'
    '\\"charge_account\\":\\"888888\\",\\"buy_num\\":1}"}'
)


def test_fulu_sign_reproduces_the_reference_vector() -> None:
    params = json.loads(FULU_VECTOR)
    assert fulu.sign(params, "TEST_SECRET") == "9647be649554230c7b940ec3c8ccbf29"
    # The same object built the way the adapter builds it (biz_content serialised by us).
    biz = {
        "product_id": 10000001,
        "customer_order_no": "FK20260719000001",
        "charge_account": "888888",
        "buy_num": 1,
    }
    built = dict(params, biz_content=json.dumps(biz, ensure_ascii=False, separators=(",", ":")))
    assert fulu.sign(built, "TEST_SECRET") == "9647be649554230c7b940ec3c8ccbf29"


def test_fulu_sign_ignores_key_order_and_sign_but_not_escapes() -> None:
    params = json.loads(FULU_VECTOR)
    reordered = dict(reversed(list(params.items())))
    assert fulu.sign(reordered, "TEST_SECRET") == "9647be649554230c7b940ec3c8ccbf29"
    assert fulu.sign(dict(params, sign="x"), "TEST_SECRET") == "9647be649554230c7b940ec3c8ccbf29"
    # Python's default separators put spaces in the text: a different signature (as noted in §5.1).
    spaced = "".join(sorted(json.dumps(params))) + "TEST_SECRET"
    assert hashlib.md5(spaced.encode()).hexdigest() != "9647be649554230c7b940ec3c8ccbf29"
    assert fulu.sign(dict(params, app_key="TEST_APP_KEZ"), "TEST_SECRET") != (
        "9647be649554230c7b940ec3c8ccbf29"
    )


def test_fulu_compact_keeps_numbers_as_written_and_does_not_escape() -> None:
    parsed = fulu.loads('{"price":46.3000,"n":1,"url":"https://a/b","name":"充值成功"}')
    assert fulu.compact(parsed) == '{"price":46.3000,"n":1,"url":"https://a/b","name":"充值成功"}'


# Published with Fulu's sandbox credentials (AppSecret and two sample card ciphertexts), as
# quoted in public SDKs next to the AES-256-ECB decryption sample.
SANDBOX_SECRET = "0a091b3aa4324435aab703142518a8f7"


def test_fulu_card_decryption_matches_the_published_samples() -> None:
    number = fulu.decrypt_card("12nCp6X/nALmrvr1erxK+D4L8n/kqz/RItKWUfvZrCU=", SANDBOX_SECRET)
    password = fulu.decrypt_card("9HeOgdv+NpLihh2+5Gm0Mj4L8n/kqz/RItKWUfvZrCU=", SANDBOX_SECRET)
    assert number == "CD1000250201906121742434441"
    assert password == "CP1000250201906121742434441"
    assert fulu.encrypt_card(number, SANDBOX_SECRET) == (
        "12nCp6X/nALmrvr1erxK+D4L8n/kqz/RItKWUfvZrCU="
    )


def test_fulu_card_decryption_refuses_a_wrong_key_or_garbage() -> None:
    with pytest.raises(ValueError):
        fulu.decrypt_card("12nCp6X/nALmrvr1erxK+D4L8n/kqz/RItKWUfvZrCU=", "f" * 32)
    with pytest.raises(ValueError):
        fulu.decrypt_card("not base64!", SANDBOX_SECRET)
    with pytest.raises(ValueError):
        fulu.decrypt_card("YWJj", SANDBOX_SECRET)  # not whole AES blocks


def test_dayuanren_sign_reproduces_the_reference_vector() -> None:
    params = {
        "userid": "10001",
        "out_trade_num": "FK20260719000001",
        "product_id": "68",
        "mobile": "18866667777",
        "notify_url": "https://shop.example/notify/dyr",
        "amount": "100",
        "sign": "ignored",
    }
    assert dayuanren.sign_text(params, "TESTAPIKEY") == (
        "amount=100&mobile=18866667777&notify_url=https://shop.example/notify/dyr"
        "&out_trade_num=FK20260719000001&product_id=68&userid=10001&apikey=TESTAPIKEY"
    )
    assert dayuanren.sign(params, "TESTAPIKEY") == "639DAFA1D59A85102173DF1219EDF969"


def test_generic_signature_is_hmac_over_timestamp_dot_body_and_fresh() -> None:
    body = b'{"customer_order_no":"K1"}'
    headers = {
        k.lower(): v for k, v in generic.signed_headers("kid", "s" * 20, body, now=1000).items()
    }
    expected = hmac.new(b"s" * 20, b"1000." + body, hashlib.sha256).hexdigest()
    assert headers["x-kami-signature"] == expected
    assert headers["x-kami-timestamp"] == "1000"
    assert generic.check_signature(headers, body, "s" * 20, now=1000 + 300) is None
    assert generic.check_signature(headers, body, "s" * 20, now=1000 - 300) is None
    assert "timestamp" in str(generic.check_signature(headers, body, "s" * 20, now=1301))
    assert "match" in str(generic.check_signature(headers, body + b" ", "s" * 20, now=1000))
    assert "match" in str(generic.check_signature(headers, body, "t" * 20, now=1000))
    assert generic.check_signature({}, body, "s" * 20) == "signature headers missing"
