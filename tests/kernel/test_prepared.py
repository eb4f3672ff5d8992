"""`kernel.prepared.Prepared`: Core statements compiled once and run on the transaction's own DB-API
connection must give what SQLAlchemy's own execution gives, on both databases."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import bindparam, insert, literal_column, or_, select, text, tuple_, update
from sqlalchemy.exc import IntegrityError

from kami.fulfilment import Shop
from kami.kernel.clock import utcnow
from kami.kernel.outbox import OutboxJob, enqueue
from kami.kernel.pgcursor import LeanCursor
from kami.kernel.prepared import Ask, Prepared, _positional, ask_all
from kami.kernel.prepared_insert import PreparedInsert
from kami.orders.queries import _BY_NO, _BY_NO_SELECT, find_order
from kami.payments.models import Inbox
from tests.conftest import add_keys, make_sku, place, random_keys

_J = OutboxJob.__table__
_JOB = Prepared(select(_J).where(_J.c.ref == bindparam("ref")))
_RESCHEDULE = Prepared(
    update(_J).where(_J.c.ref == bindparam("ref")).values(run_after=bindparam("at"))
)
_NEW_JOB = PreparedInsert(
    _J, ["kind", "ref", "payload", "status", "attempts", "run_after", "created_at"], _J.c.id
)


def test_rows_equal_sqlalchemys_own_for_a_real_order(shop: Shop) -> None:
    sku = make_sku(shop, "P-1")
    add_keys(shop, sku, random_keys(1))
    placed = place(shop, sku.code).order
    with shop.db.read() as s:
        ours = _BY_NO.run(s, {"order_no": placed.order_no}).one()
        theirs = s.connection().execute(_BY_NO_SELECT, {"order_no": placed.order_no}).one()
        view = find_order(s, placed.order_no)
    assert tuple(ours) == tuple(theirs)
    assert [type(v) for v in ours] == [type(v) for v in theirs]  # datetimes, enums, JSON alike
    assert ours.created_at.utcoffset() == timedelta(0)  # UTC-aware, as the ORM gives it
    assert view is not None and view.created_at == ours.created_at


def test_json_and_utc_datetimes_round_trip(shop: Shop) -> None:
    at = utcnow().replace(microsecond=123456)
    with shop.db.write() as s:
        job_id = _NEW_JOB.run(
            s,
            kind="k",
            ref="r-1",
            payload={"order_no": "X", "n": [1, 2], "ü": None},
            status="pending",
            attempts=0,
            run_after=at,
            created_at=at,
        ).scalar_one()
    with shop.db.read() as s:
        row = _JOB.run(s, {"ref": "r-1"}).one()
        orm = s.get(OutboxJob, job_id)
        assert orm is not None and orm.payload == row.payload and orm.run_after == at
    assert row.payload == {"order_no": "X", "n": [1, 2], "ü": None}
    assert row.run_after == at and row.run_after.utcoffset() == timedelta(0)


def test_runs_inside_the_sessions_transaction(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="r-2")
    later = utcnow() + timedelta(hours=1)
    with pytest.raises(RuntimeError, match="undo"), shop.db.write() as s:
        assert _RESCHEDULE.run(s, {"ref": "r-2", "at": later}).rowcount == 1
        raise RuntimeError("undo")
    with shop.db.read() as s:
        assert _JOB.run(s, {"ref": "r-2"}).one().run_after < later  # rolled back with it
    with shop.db.write() as s:
        _RESCHEDULE.run(s, {"ref": "r-2", "at": later})
        s.commit()  # a second transaction in the same session gets its own connection state
        assert _JOB.run(s, {"ref": "r-2"}).one().run_after == later
        s.execute(text("SELECT 1"))


def test_a_write_inside_a_read_is_refused(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="r-3")
    with shop.db.read() as s, pytest.raises(RuntimeError, match=r"inside Database\.read"):
        _RESCHEDULE.run(s, {"ref": "r-3", "at": utcnow()})


def test_parameters_must_be_exactly_the_statements(shop: Shop) -> None:
    with shop.db.write() as s, pytest.raises(TypeError, match=r"missing=.*'at'"):
        _RESCHEDULE.run(s, {"ref": "x"})
    with shop.db.write() as s, pytest.raises(TypeError, match=r"extra=.*'when'"):
        _RESCHEDULE.run(s, {"ref": "x", "at": utcnow(), "when": 1})


def test_an_expanding_in_cannot_be_prepared() -> None:
    with pytest.raises(TypeError, match="expanding IN"):
        Prepared(select(_J.c.id).where(_J.c.id.in_(bindparam("ids", expanding=True))))


def test_a_bind_without_a_type_cannot_be_prepared() -> None:
    """Its value would reach the driver unconverted (on SQLite an aware datetime as the
    driver's own text, which compares wrongly with the column's). Both shapes met in the shop:
    a bind inside tuple_(), and the rows after the first of a multi-row VALUES."""
    with pytest.raises(TypeError, match="p_at: a bind without a type"):
        Prepared(
            select(_J.c.id).where(
                tuple_(_J.c.run_after, _J.c.id) > tuple_(bindparam("p_at"), bindparam("p_id"))
            )
        )
    rows = [{"ref": bindparam(f"r{i}"), "run_after": bindparam(f"at{i}")} for i in range(2)]
    with pytest.raises(TypeError, match=r"(r1|at1): a bind without a type"):
        Prepared(insert(_J).values(rows))
    typed = [
        {c: bindparam(f"{c}{i}", type_=_J.c[c].type) for c in ("ref", "run_after")}
        for i in range(2)
    ]
    Prepared(insert(_J).values(typed))  # every row typed as its column: accepted


def test_a_driver_error_is_sqlalchemys_and_hides_the_values(shop: Shop) -> None:
    add_keys(shop, make_sku(shop, "P-2"), random_keys(1))
    order = place(shop, "P-2").order
    inbox = Prepared(
        insert(Inbox.__table__).values(
            gateway="sandbox",
            trade_no=bindparam("trade_no"),
            order_id=order.id,
            amount_minor=1,
            currency="CNY",
            applied_at=bindparam("at"),
        )
    )
    with shop.db.write() as s:
        inbox.run(s, {"trade_no": "secret-trade-1", "at": utcnow()})
    with pytest.raises(IntegrityError) as caught, shop.db.write() as s:
        inbox.run(s, {"trade_no": "secret-trade-1", "at": utcnow()})
    assert "[SQL: INSERT INTO payments_inbox" in str(caught.value)  # what failed, and where
    assert "[parameters:" not in str(caught.value)  # but not the values sent
    with shop.db.read() as s:  # the failed transaction left the first row alone
        assert s.execute(text("SELECT count(*) FROM payments_inbox")).scalar_one() == 1


def test_named_placeholders_become_positional_in_order() -> None:
    sql, order = _positional("SELECT '5%%', %(a)s WHERE x = %(b)s OR y = %(a)s AND z LIKE '%%(c)s'")
    assert sql == "SELECT '5%%', %s WHERE x = %s OR y = %s AND z LIKE '%%(c)s'"
    assert order == ["a", "b", "a"]  # a name used twice is sent twice; an escaped one is text


def test_a_repeated_parameter_and_a_literal_percent_on_the_driver(shop: Shop) -> None:
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="50%-off")
        enqueue(s, "k", {}, ref="other")
    both = Prepared(
        select(_J.c.ref, literal_column("'100%'").label("all"))
        .where(or_(_J.c.ref == bindparam("ref"), _J.c.kind == bindparam("ref")))
        .where(_J.c.ref.like(literal_column("'50%'")))
        .where(_J.c.status != bindparam("not status.x"))  # a name the SQL spells escaped
    )
    with shop.db.read() as s:
        rows = both.run(s, {"ref": "50%-off", "not status.x": "dead"}).all()
    assert [tuple(r) for r in rows] == [("50%-off", "100%")]


def test_asks_answer_in_order_each_seeing_what_the_one_before_saw(
    shop: Shop, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ask_all`: several domains' reads, each with what its rows come to, answered in order;
    on PostgreSQL in one round trip (`checkout.sold_out_for` reads the stock, the next expiry
    and the buyers' keys so, decision 0024)."""
    with shop.db.write() as s:
        enqueue(s, "k", {}, ref="first")
    asks: list[Ask[object]] = [
        Ask(_JOB, {"ref": "first"}, lambda rows: rows.first().ref),
        Ask(_JOB, {"ref": "none"}, lambda rows: rows.first()),
        Ask(_JOB, {"ref": "first"}, lambda rows: len(rows.all())),
    ]
    trips: list[int] = []
    for name in ("execute", "execute_all"):
        real = getattr(LeanCursor, name)

        def counted(self: LeanCursor, *args: object, _real: object = real) -> object:
            trips.append(1)
            return _real(self, *args)  # type: ignore[operator]

        monkeypatch.setattr(LeanCursor, name, counted)
    with shop.db.read() as s:
        assert ask_all(s, asks) == ["first", None, 1]
        assert asks[2].run(s) == 1
    if shop.db.dialect == "postgresql":
        assert len(trips) == 2  # all three, then the one asked alone
