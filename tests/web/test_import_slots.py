"""`ImportSlots`: at most `limit` imports at once per process, and a slot given back twice is a
fault, not one more import let in."""

from __future__ import annotations

import pytest

from kami.web.admin.api import ImportsBusy, ImportSlots


def test_one_more_import_than_the_limit_is_refused_until_one_ends() -> None:
    slots = ImportSlots(2)
    slots.take()
    slots.take()
    with pytest.raises(ImportsBusy, match="already running 2 key imports"):
        slots.take()
    slots.give()
    slots.take()


def test_a_slot_given_back_twice_is_refused() -> None:
    slots = ImportSlots(1)
    slots.take()
    slots.give()
    with pytest.raises(RuntimeError, match="not taken"):
        slots.give()
    slots.take()  # still one slot, not two
    with pytest.raises(ImportsBusy):
        slots.take()
