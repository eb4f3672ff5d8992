"""License key patterns, the checksum and key generation: pure logic, no I/O.

A pattern such as `XXXXX-XXXXX-XXXXX-XXXXX` has one random character of `ALPHABET` per `X`,
separators `-`, and optionally fixed characters of the alphabet (a product prefix: `KAM-XXXX…`).
The last two characters of every key are a check value over all the others, so a client (and the
server, before any database look-up) can refuse a mistyped key on its own.

The check value is `sum((i + 1) * v_i) mod 1021` over the values `v_i` of the characters before
it (separators dropped), written as two base-32 digits. 1021 is prime and larger than every
difference of two values (< 32) and every weight (< 64) plus 32, which makes every single-character
change and every transposition of two characters (adjacent or not, including one that moves a check
digit into the body) change the check: a change of one value `v_i` by `d` shifts the sum by
`(i + 1) * d`, non-zero mod a prime that divides neither factor; a transposition of `v_i` and `v_j`
shifts it by `(j - i) * (v_i - v_j)`, likewise; swapping the last body character `b` with the first
check digit `c` shifts the sum by `w * (c - b)` and the written check by `32 * (b - c)`, which agree
only if `(w + 32) * (c - b) ≡ 0`, impossible for the same reason.
"""

from __future__ import annotations

import secrets

# No 0/O and 1/I: the characters people confuse when they copy a key by hand.
ALPHABET = "23456789ABCDEFGHJKLMNPQRSTUVWXYZ"
assert len(ALPHABET) == 32 and len(set(ALPHABET)) == 32
VALUE = {c: n for n, c in enumerate(ALPHABET)}
SLOT = "X"  # a random (or check) character in a pattern
SEPARATOR = "-"
CHECK_CHARS = 2
MODULUS = 1021
MIN_SLOTS = 16  # 14 random characters (70 bits) and the two check characters
MAX_LENGTH = 64  # of a pattern, and of a key's characters without separators
DEFAULT_PATTERN = "XXXXX-XXXXX-XXXXX-XXXXX"
SHOWN = 4  # characters left visible at the end of a masked key
_IGNORED = str.maketrans("", "", SEPARATOR + " \t")


def pattern_problem(pattern: str) -> str | None:
    """Why `pattern` cannot make keys, or None when it can."""
    if not pattern or len(pattern) > MAX_LENGTH:
        return f"must be 1 to {MAX_LENGTH} characters long"
    wrong = sorted({c for c in pattern if c != SEPARATOR and c not in VALUE})
    if wrong:
        return (
            f"may hold only {SLOT} (a random character), {SEPARATOR!r} and fixed characters of "
            f"{ALPHABET}; not {''.join(wrong)!r}"
        )
    if pattern.startswith(SEPARATOR) or pattern.endswith(SEPARATOR) or "--" in pattern:
        return f"{SEPARATOR!r} must sit between groups: not first, last or doubled"
    slots = pattern.count(SLOT)
    if slots < MIN_SLOTS:
        return (
            f"needs at least {MIN_SLOTS} {SLOT} characters ({MIN_SLOTS - CHECK_CHARS} random "
            f"and {CHECK_CHARS} check characters), not {slots}"
        )
    if not pattern.endswith(SLOT * CHECK_CHARS):
        return f"must end with {SLOT * CHECK_CHARS}: the last two characters are the checksum"
    return None


def check_value(body: str) -> str:
    """The two check characters for `body` (alphabet characters, no separators)."""
    total = sum((i + 1) * VALUE[c] for i, c in enumerate(body)) % MODULUS
    return ALPHABET[total // 32] + ALPHABET[total % 32]


def compact(text: str) -> str | None:
    """A key as typed → its canonical form (upper case, no separators) if the checksum holds.

    Cheap and pattern-free, so garbage is refused before the database is asked anything."""
    if len(text) > 4 * MAX_LENGTH:
        return None
    key = text.strip().upper().translate(_IGNORED)
    if not MIN_SLOTS <= len(key) <= MAX_LENGTH or any(c not in VALUE for c in key):
        return None
    body, check = key[:-CHECK_CHARS], key[-CHECK_CHARS:]
    return key if check_value(body) == check else None


def generate(pattern: str) -> str:
    """A new random key in `pattern` (which `pattern_problem` accepted)."""
    body = [secrets.choice(ALPHABET) if c == SLOT else c for c in pattern[:-CHECK_CHARS]]
    check = check_value("".join(c for c in body if c != SEPARATOR))
    return "".join(body) + check


def mask(key: str) -> str:
    """`ABCDE-FGHJK-LMNPQ-RSTUV` → `*****-*****-*****-*STUV`: only the last four characters."""
    out = []
    shown = 0
    for c in reversed(key):
        if c == SEPARATOR:
            out.append(c)
        elif shown < SHOWN:
            out.append(c)
            shown += 1
        else:
            out.append("*")
    return "".join(reversed(out))
