"""The hub store on SQLite and PostgreSQL: migrations, nodes, versions, reports."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, func, inspect, select
from sqlalchemy.pool import NullPool

from hub.store import Database, Store
from hub.store.db import alembic_config
from hub.store import tables as t
from hub.store.repo import IncomingReport

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)


def _sync_engine(db: Database):
    return create_engine(db.sync_url, poolclass=NullPool)


def test_migrations_idempotent_and_match_tables(db_url):
    db = Database(db_url)
    db.migrate()
    db.migrate()  # a second run is a no-op, not an error
    engine = _sync_engine(db)
    try:
        with engine.connect() as conn:
            names = set(inspect(conn).get_table_names())
            assert {"counters", "nodes", "desired_objects", "applied", "reports", "revisions", "alembic_version"} <= names
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": False})
            diffs = compare_metadata(ctx, t.Base.metadata)
            assert diffs == [], f"migrations and hub/store/tables.py disagree: {diffs}"
            heads = conn.exec_driver_sql("SELECT version_num FROM alembic_version").fetchall()
            head = ScriptDirectory.from_config(alembic_config(db.sync_url)).get_current_head()
            assert heads == [(head,)]
    finally:
        engine.dispose()
        asyncio.run(db.close())


def test_compare_metadata_would_see_a_drift(db_url):
    """The agreement check above can fail: a column missing from the migrations is reported."""
    from sqlalchemy import Column, MetaData, String, Table

    db = Database(db_url)
    db.migrate()
    md = MetaData()
    for table in t.Base.metadata.tables.values():
        table.to_metadata(md)
    Table("nodes", md, Column("extra", String(8)), extend_existing=True)
    engine = _sync_engine(db)
    try:
        with engine.connect() as conn:
            diffs = compare_metadata(MigrationContext.configure(conn), md)
        assert any(d[0] == "add_column" and d[3].name == "extra" for d in diffs), diffs
    finally:
        engine.dispose()
        asyncio.run(db.close())


async def test_register_node_upserts(store):
    inv = {"region": "eu-central", "country": "DE"}
    a = await store.register_node("fra", "n1", "0.1.0", inv, T0)
    assert (a.site, a.node, a.agent_version, a.inventory, a.connected) == ("fra", "n1", "0.1.0", inv, True)
    assert a.first_seen == a.last_seen == T0
    await store.mark_disconnected(a.id, T0 + timedelta(seconds=5))
    assert (await store.get_node("fra", "n1")).connected is False

    later = T0 + timedelta(minutes=1)
    b = await store.register_node("fra", "n1", "0.2.0", {"region": "eu-west"}, later)
    assert b.id == a.id, "same (site, node) must be the same row"
    assert (b.agent_version, b.inventory, b.connected) == ("0.2.0", {"region": "eu-west"}, True)
    assert b.first_seen == T0 and b.last_seen == later

    c = await store.register_node("fra", "n2", "0.1.0", {}, later)
    d = await store.register_node("par", "n1", "0.1.0", {}, later)
    assert len({a.id, c.id, d.id}) == 3
    assert [(n.site, n.node) for n in await store.list_nodes()] == [("fra", "n1"), ("fra", "n2"), ("par", "n1")]
    assert [n.node for n in await store.list_nodes("fra")] == ["n1", "n2"]
    assert await store.get_node("waw", "n1") is None


async def test_put_and_delete_bump_one_global_version(store):
    assert await store.current_version() == 0
    a = await store.put_object("Config", "a", {"x": 1}, now=T0)
    b = await store.put_object("Config", "b", {"x": 2}, "fra", now=T0)
    a2 = await store.put_object("Config", "a", {"x": 3}, now=T0)
    p = await store.put_object("Placement", "a", {}, "fra", "n1", now=T0)  # same name, other kind: other object
    assert [a.version, b.version, a2.version, p.version] == [1, 2, 3, 4]
    assert a2.id == a.id and a2.spec == {"x": 3}
    assert p.id != a.id
    gone = await store.delete_object("Config", "b", now=T0)
    assert gone is not None and gone.deleted and gone.version == 5 and gone.id == b.id
    assert await store.delete_object("Config", "b", now=T0) is None  # already deleted
    assert await store.delete_object("Config", "nope", now=T0) is None
    assert await store.current_version() == 5
    assert [(o.kind, o.name, o.version) for o in await store.live_objects()] == [("Config", "a", 3), ("Placement", "a", 4)]
    assert [o.name for o in await store.live_objects("Placement")] == ["a"]
    # Tombstones are seen by version watchers.
    assert [(o.id, o.deleted) for o in await store.changed_since(3)] == [(p.id, False), (b.id, True)]
    # Targeting in the store agrees with ObjectRecord.targets.
    assert [o.name for o in await store.objects_for("fra", "n1")] == ["a", "a"]
    assert [o.kind for o in await store.objects_for("fra", "n2")] == ["Config"]
    # Re-creating a deleted object revives it with a new version and the same id.
    b2 = await store.put_object("Config", "b", {"x": 9}, now=T0)
    assert (b2.id, b2.version, b2.deleted) == (b.id, 6, False)


async def test_concurrent_puts_never_share_a_version(store):
    objs = await asyncio.gather(*(store.put_object("Config", f"c{i}", {}, now=T0) for i in range(10)))
    assert sorted(o.version for o in objs) == list(range(1, 11))


def reports(*seqs: int) -> list[IncomingReport]:
    return [IncomingReport(s, "event", T0, {"seq": s}) for s in seqs]


async def test_store_reports_exactly_once(store):
    n = await store.register_node("fra", "n1", "0.1.0", {}, T0)
    other = await store.register_node("par", "n1", "0.1.0", {}, T0)
    r1 = await store.store_reports(n.id, reports(1, 2, 3), T0)
    assert (r1.new, r1.duplicate) == ((1, 2, 3), ())
    r2 = await store.store_reports(n.id, reports(2, 3, 4, 5), T0)  # replay overlapping a new tail
    assert (r2.new, r2.duplicate) == ((4, 5), (2, 3))
    r3 = await store.store_reports(n.id, reports(1, 2, 3, 4, 5), T0)  # full replay
    assert (r3.new, r3.duplicate) == ((), (1, 2, 3, 4, 5))
    assert (await store.store_reports(n.id, [], T0)).new == ()
    # Another node's seq 1 is a different report.
    assert (await store.store_reports(other.id, reports(1), T0)).new == (1,)

    stored = await store.reports(n.id)
    assert [r.seq for r in stored] == [1, 2, 3, 4, 5]
    assert stored[0].payload == {"seq": 1} and stored[0].created_at == T0
    node = await store.get_node("fra", "n1")
    assert node.reports_received == 5, "the counter must match the rows, replays not counted"
    assert node.reports_duplicate == 2 + 5
    assert await store.max_report_seq(n.id) == 5
    assert await store.max_report_seq(other.id) == 1
    assert await store.report_counts() == {n.id: (5, 5), other.id: (1, 1)}
    async with store.db.sessions() as s:
        rows = (await s.execute(select(func.count()).select_from(t.Report))).scalar_one()
    assert rows == 6


async def test_concurrent_replays_store_once(store):
    n = await store.register_node("fra", "n1", "0.1.0", {}, T0)
    results = await asyncio.gather(*(store.store_reports(n.id, reports(*range(1, 51)), T0) for _ in range(4)))
    assert sorted(s for r in results for s in r.new) == list(range(1, 51))
    node = await store.get_node("fra", "n1")
    assert (node.reports_received, node.reports_duplicate) == (50, 150)
    assert (await store.report_counts())[n.id] == (50, 50)


async def test_report_batches_of_several_streams_commit_together_each_exactly_once(store):
    """Group commit (the link stores the batches of many streams in one transaction): each batch learns
    what of it was new, a resend among fresh rows is told apart, and the counters match the rows."""
    from hub.store.repo import ReportBatch

    a = await store.register_node("fra", "a", "0.1.0", {}, T0)
    b = await store.register_node("fra", "b", "0.1.0", {}, T0)
    await store.store_reports(a.id, reports(1, 2), T0, incarnation="ia")
    got = await store.store_report_batches([
        ReportBatch(a.id, "ia", reports(1, 2, 3), T0),       # a resend and one new row
        ReportBatch(b.id, "ib", reports(1, 2), T0),          # all new
        ReportBatch(a.id, "other", reports(1), T0),          # another stream of the same node
        ReportBatch(b.id, "empty", [], T0),
    ])
    assert [(r.new, r.duplicate) for r in got] == [((3,), (1, 2)), ((1, 2), ()), ((1,), ()), ((), ())]
    again = await store.store_report_batches([ReportBatch(b.id, "ib", reports(1, 2, 3), T0)])
    assert [(r.new, r.duplicate) for r in again] == [((3,), (1, 2))]
    na, nb = await store.get_node("fra", "a"), await store.get_node("fra", "b")
    assert (na.reports_received, na.reports_duplicate) == (4, 2)
    assert (nb.reports_received, nb.reports_duplicate) == (3, 2)
    assert await store.report_counts() == {a.id: (4, 3), b.id: (3, 3)}
    assert [(r.incarnation, r.seq, r.payload) for r in await store.reports(b.id)] == [
        ("ib", 1, {"seq": 1}), ("ib", 2, {"seq": 2}), ("ib", 3, {"seq": 3})]


async def test_report_batches_refuse_one_stream_twice_and_store_nothing_of_a_failed_group(store):
    from hub.store.repo import ReportBatch

    a = await store.register_node("fra", "a", "0.1.0", {}, T0)
    b = await store.register_node("fra", "b", "0.1.0", {}, T0)
    with pytest.raises(ValueError, match="listed twice"):
        await store.store_report_batches([ReportBatch(a.id, "i", reports(1), T0),
                                          ReportBatch(a.id, "i", reports(2), T0)])
    from sqlalchemy.exc import DBAPIError

    with pytest.raises(DBAPIError):
        await store.store_report_batches([ReportBatch(a.id, "i", reports(1, 2), T0),
                                          ReportBatch(b.id, "i", [IncomingReport(1, "k" * 65, T0, {})], T0)])
    assert await store.report_counts() == {}
    na = await store.get_node("fra", "a")
    assert (na.reports_received, na.reports_duplicate) == (0, 0)


async def test_applied_rows_upsert_and_delete(store):
    from hub.store.repo import AppliedRecord

    n = await store.register_node("fra", "n1", "0.1.0", {}, T0)
    await store.record_applied([AppliedRecord(n.id, "o1", 1, True, "", T0), AppliedRecord(n.id, "o1", 2, False, "bad", T0),
                                AppliedRecord(n.id, "o2", 3, True, "", T0)])
    rows = {r.object_id: (r.version, r.ok, r.error) for r in await store.applied_rows()}
    assert rows == {"o1": (2, False, "bad"), "o2": (3, True, "")}  # last ack per object wins
    await store.record_applied([AppliedRecord(n.id, "o1", 4, True, "", T0)], [(n.id, "o2")])
    rows = {r.object_id: (r.version, r.ok) for r in await store.applied_rows()}
    assert rows == {"o1": (4, True)}


async def test_register_nodes_in_one_batch_with_their_last_report_seq(store):
    first = await store.register_node("fra", "a", "1.0", {}, T0)
    await store.store_reports(first.id, reports(1, 2, 7), T0, incarnation="inc1")
    await store.store_reports(first.id, reports(1, 2, 3, 4, 5, 6, 7, 8, 9), T0, incarnation="old")
    got = await store.register_nodes(
        [("fra", "a", "1.1", {"gpus": []}, "inc1"), ("par", "b", "1.1", {}, "p1"), ("par", "b", "1.2", {"x": 1}, "p1")],
        T0 + timedelta(seconds=5),
    )
    assert set(got) == {("fra", "a", "inc1"), ("par", "b", "p1")}
    fra, fra_seq = got[("fra", "a", "inc1")]
    assert (fra.id, fra.agent_version, fra.connected, fra_seq) == (first.id, "1.1", True, 7)
    assert fra.first_seen == T0 and fra.last_seen == T0 + timedelta(seconds=5)
    par, par_seq = got[("par", "b", "p1")]
    assert (par.agent_version, par.inventory, par_seq) == ("1.2", {"x": 1}, 0)  # the last hello wins
    assert await store.register_nodes([], T0) == {}


async def test_register_nodes_answers_each_incarnation_with_its_own_last_seq(store):
    """The Welcome's last_report_seq is per report stream: a new incarnation starts at 0."""
    n = await store.register_node("fra", "a", "1.0", {}, T0)
    await store.store_reports(n.id, reports(1, 2, 3), T0, incarnation="gone")
    got = await store.register_nodes([("fra", "a", "1.0", {}, "gone"), ("fra", "a", "1.0", {}, "fresh")], T0)
    assert {k: seq for k, (_, seq) in got.items()} == {("fra", "a", "gone"): 3, ("fra", "a", "fresh"): 0}
    assert got[("fra", "a", "gone")][0].id == got[("fra", "a", "fresh")][0].id == n.id


async def test_a_new_incarnation_starts_a_new_stream_stored_in_full(store):
    """An agent that lost its state starts again at seq 1 under a new incarnation: stored, not dropped."""
    n = await store.register_node("fra", "a", "1.0", {}, T0)
    old = await store.store_reports(n.id, reports(1, 2, 3), T0, incarnation="aaaa")
    new = await store.store_reports(n.id, [IncomingReport(s, "audit", T0, {"new": s}) for s in (1, 2)], T0,
                                    incarnation="bbbb")
    again = await store.store_reports(n.id, reports(2, 3), T0, incarnation="aaaa")
    assert (old.new, new.new, new.duplicate, again.duplicate) == ((1, 2, 3), (1, 2), (), (2, 3))
    got = [(r.incarnation, r.seq, r.kind, r.payload) for r in await store.reports(n.id)]
    assert got == [("aaaa", 1, "event", {"seq": 1}), ("aaaa", 2, "event", {"seq": 2}), ("aaaa", 3, "event", {"seq": 3}),
                   ("bbbb", 1, "audit", {"new": 1}), ("bbbb", 2, "audit", {"new": 2})]
    assert (await store.max_report_seq(n.id, "aaaa"), await store.max_report_seq(n.id, "bbbb")) == (3, 2)
    node = await store.get_node("fra", "a")
    assert (node.reports_received, node.reports_duplicate) == (5, 2)


def test_migration_0004_keeps_old_reports_under_the_empty_incarnation(db_url):
    """A store with reports from before incarnations: upgraded, its rows are the stream '' and a
    new incarnation's seq 1 is a different report."""
    from alembic import command
    from sqlalchemy import text

    db = Database(db_url)
    engine = _sync_engine(db)
    try:
        with engine.begin() as conn:
            cfg = alembic_config(db.sync_url)
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "0003")
            conn.execute(text("INSERT INTO nodes (site, node, agent_version, inventory, first_seen, last_seen, connected, "
                              "recent_errors, reports_received, reports_duplicate) VALUES ('fra', 'a', '0', '{}', "
                              ":t, :t, false, '[]', 2, 0)"), {"t": T0})
            for seq in (1, 2):
                conn.execute(text("INSERT INTO reports (node_id, seq, kind, created_at, received_at, payload) "
                                  "VALUES (1, :s, 'event', :t, :t, '{\"old\": true}')"), {"s": seq, "t": T0})
        db.migrate()
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT incarnation, seq FROM reports ORDER BY seq")).all()
            checks = {c["name"] for c in inspect(conn).get_check_constraints("reports")}
            pk = inspect(conn).get_pk_constraint("reports")["constrained_columns"]
        assert [tuple(r) for r in rows] == [("", 1), ("", 2)]
        assert "ck_reports_kind_length" in checks
        assert sorted(pk) == ["incarnation", "node_id", "seq"]

        async def more():
            store = Store(db)
            fresh = await store.store_reports(1, reports(1, 2, 3), T0, incarnation="new0")
            return fresh.new, [(r.incarnation, r.seq) for r in await store.reports(1)]

        new, stored = asyncio.run(more())
        assert new == (1, 2, 3)
        assert sorted(stored) == [("", 1), ("", 2), ("new0", 1), ("new0", 2), ("new0", 3)]

        # Back to 0003: one row per (node, seq), the legacy stream's where both have one.
        with engine.begin() as conn:
            cfg = alembic_config(db.sync_url)
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0003")
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT seq, payload FROM reports ORDER BY seq")).all()
            assert "incarnation" not in {c["name"] for c in inspect(conn).get_columns("reports")}
        assert [r[0] for r in rows] == [1, 2, 3] and "old" in str(rows[0][1]) and "old" not in str(rows[2][1])
    finally:
        engine.dispose()
        asyncio.run(db.close())


async def test_the_database_refuses_a_report_kind_over_64_characters(store):
    """SQLite ignores VARCHAR(64); the CHECK of migration 0004 holds on every database."""
    from sqlalchemy.exc import DBAPIError

    n = await store.register_node("fra", "a", "1.0", {}, T0)
    ok = await store.store_reports(n.id, [IncomingReport(1, "k" * 64, T0, {})], T0, incarnation="i")
    assert ok.new == (1,)
    with pytest.raises(DBAPIError, match="ck_reports_kind_length|too long"):
        await store.store_reports(n.id, [IncomingReport(2, "k" * 65, T0, {})], T0, incarnation="i")
    assert [r.seq for r in await store.reports(n.id)] == [1]


async def test_audit_trail_is_append_only_in_the_database(store):
    from datetime import UTC, datetime

    from sqlalchemy import delete, update

    from hub.store import tables as t
    from hub.store.repo import AuditRecord

    now = datetime.now(UTC)
    await store.append_audit([AuditRecord(now, "ana", "rollout.start", "rollout/x", {"n": 1})])
    for stmt in (update(t.Audit).values(actor="mallory"), delete(t.Audit)):
        with pytest.raises(Exception, match="append-only"):  # noqa: B017 - the driver's error, whichever it is
            async with store.db.sessions.begin() as s:
                await s.execute(stmt)
    assert [(a.actor, a.details) for a in await store.list_audit()] == [("ana", {"n": 1})]



async def test_close_waits_for_operations_whose_callers_were_cancelled(store):
    """Stream handlers are cancelled whenever an agent leaves or the hub stops; the write they
    started goes on. If the store closed under it, that operation handed its connection back to
    a pool nobody closes, and the garbage collector closed it later with a ResourceWarning (CI
    failed on it in test_link). `close` waits for such operations, and refuses new ones."""
    import gc
    import warnings

    from hub.store.db import StoreError

    await store.register_node("fra", "n1", "0.1.0", {}, T0)
    node = await store.get_node("fra", "n1")
    reports = [IncomingReport(seq=i, kind="latency", created_at=T0, payload={"i": i}) for i in range(1, 201)]
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        # What the link did: a shielded write, its handler cancelled, the hub closing the store.
        async def handler():
            await asyncio.shield(store.store_reports(node.id, reports, T0, incarnation="inc-a"))

        caller = asyncio.create_task(handler())
        for _ in range(3):
            await asyncio.sleep(0)
        caller.cancel()
        await asyncio.gather(caller, return_exceptions=True)
        await store.db.close()
        with pytest.raises(StoreError, match="closed"):
            await store.list_nodes()
        await asyncio.sleep(0.5)  # anything still running would finish and hand its connection back now
        gc.collect()
    assert [str(w.message) for w in seen if issubclass(w.category, ResourceWarning)] == []
    assert store.db.busy == 0

    # The write finished before the store closed: all of it is there.
    again = Database(store.db.url)
    try:
        assert (await Store(again).max_report_seq(node.id, "inc-a")) == 200
    finally:
        await again.close()


async def test_reports_of_kind_of_some_sites_and_the_latest_revision_number(store):
    """A rollout's gate reads the reports of the sites it gave the new version, not the whole fleet's;
    its controller checks the latest revision's number each tick and reads the revision only when it moved."""
    a = await store.register_node("fra", "a", "0.1.0", {}, T0)
    b = await store.register_node("par", "b", "0.1.0", {}, T0)
    await store.store_reports(a.id, [IncomingReport(1, "telemetry", T0, {"x": 1})], T0, incarnation="i")
    await store.store_reports(b.id, [IncomingReport(1, "telemetry", T0, {"x": 2})], T0, incarnation="i")
    await store.store_reports(b.id, [IncomingReport(2, "audit", T0, {"x": 3})], T0, incarnation="i")
    every = await store.reports_of_kind("telemetry")
    assert [(site, node, r.seq, r.payload) for site, node, r in every] == [("fra", "a", 1, {"x": 1}),
                                                                          ("par", "b", 1, {"x": 2})]
    assert [(site, r.payload) for site, _, r in await store.reports_of_kind("telemetry", sites={"par"})] == [
        ("par", {"x": 2})]
    assert await store.reports_of_kind("telemetry", sites=set()) == []
    assert await store.latest_revision_number() == 0
