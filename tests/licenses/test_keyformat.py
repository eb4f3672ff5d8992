"""The key pattern and its checksum: every single-character change and every transposition of
two characters is refused before any database is asked."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

import pytest

from kami.licenses import keyformat
from kami.licenses.keyformat import ALPHABET, check_value, compact, generate, mask, pattern_problem

PATTERNS = ["XXXXX-XXXXX-XXXXX-XXXXX", "XXXX-XXXX-XXXX-XXXX", "ACME-XXXXXXXX-XXXXXXXXXX", "X" * 64]
# Characters a typist might put in: the whole alphabet, the look-alikes it leaves out, others.
TYPED = ALPHABET + "01OI" + "ab-_ %"


@pytest.mark.parametrize("pattern", PATTERNS)
def test_generated_keys_follow_their_pattern(pattern: str) -> None:
    assert pattern_problem(pattern) is None
    keys = {generate(pattern) for _ in range(200)}
    assert len(keys) == 200
    for key in keys:
        assert len(key) == len(pattern)
        for p, c in zip(pattern, key, strict=True):
            assert c in ALPHABET if p == "X" else c == p
        assert compact(key) == key.replace("-", "")
        # Lower case, spaces and missing separators are the same key.
        assert compact(" " + key.lower().replace("-", " ") + "\t") == key.replace("-", "")


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_single_character_change_is_caught(pattern: str) -> None:
    for key in (generate(pattern) for _ in range(20)):
        for i, original in enumerate(key):
            if original == "-":
                continue
            for c in TYPED:
                if c.upper() == original or c in "- ":
                    continue
                changed = key[:i] + c + key[i + 1 :]
                assert compact(changed) is None, (key, changed)


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_transposition_is_caught(pattern: str) -> None:
    for key in (generate(pattern) for _ in range(20)):
        chars = key.replace("-", "")
        # Adjacent ones (the typist's slip), across separators and into the check digits, and
        # in fact any two positions.
        for i, j in itertools.combinations(range(len(chars)), 2):
            if chars[i] == chars[j]:
                continue
            swapped = list(chars)
            swapped[i], swapped[j] = swapped[j], swapped[i]
            assert compact("".join(swapped)) is None, (key, i, j)


def test_garbage_is_refused() -> None:
    for text in ["", "-", "ABC", "X" * 300, "ÄÖÜ" * 8, "\x00" * 20, "2" * 65, "22-22"]:
        assert compact(text) is None


def test_check_value_is_two_alphabet_characters() -> None:
    for body in ["2" * 14, "Z" * 62, "ACME23456789AB"]:
        check = check_value(body)
        assert len(check) == 2 and all(c in ALPHABET for c in check)
        assert ALPHABET.index(check[0]) * 32 + ALPHABET.index(check[1]) < keyformat.MODULUS


@pytest.mark.parametrize(
    ("pattern", "words"),
    [
        ("", "1 to 64"),
        ("X" * 65, "1 to 64"),
        ("XXXX-XXXX-XXXX-XXX0", "not '0'"),
        ("xxxx-xxxx-xxxx-xxxx", "not 'x'"),
        ("KAMI-XXXX-XXXX-XXXX-XXXX", "not 'I'"),
        ("-XXXX-XXXX-XXXX-XXXX", "between groups"),
        ("XXXX--XXXX-XXXX-XXXX", "between groups"),
        ("XXXX-XXXX-XXXX-XXX", "at least 16"),
        ("XXXX-XXXX-XXXX-XXXX-AB", "must end with XX"),
        ("XXXX XXXX XXXX XXXX", "not ' '"),
    ],
)
def test_bad_patterns_say_why(pattern: str, words: str) -> None:
    problem = pattern_problem(pattern)
    assert problem is not None and words in problem


def test_mask_shows_only_the_last_four_characters() -> None:
    assert mask("ABCDE-FGHJK-LMNPQ-RSTUV") == "*****-*****-*****-*STUV"
    assert mask("ACME-2345-6789") == "****-****-6789"


def test_the_documented_client_side_check_agrees() -> None:
    """docs/licenses.md gives sellers a checksum snippet; it must say what the server says."""
    doc = (Path(__file__).parents[2] / "docs" / "licenses.md").read_text()
    snippet = next(b for b in re.findall(r"```python\n(.*?)```", doc, re.S) if "looks_valid" in b)
    namespace: dict[str, Any] = {}
    exec(snippet, namespace)  # our own documentation
    looks_valid = namespace["looks_valid"]
    for pattern in PATTERNS:
        for key in (generate(pattern) for _ in range(50)):
            assert looks_valid(key) and looks_valid(key.lower().replace("-", " "))
            for i, c in enumerate(key):
                for other in "2Z0":
                    changed = key[:i] + other + key[i + 1 :]
                    assert looks_valid(changed) == (compact(changed) is not None)
