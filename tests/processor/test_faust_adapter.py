"""processor.faust_adapter is the one place the processor touches Faust: the rest imports no Faust module
and reads no private attribute of Faust's objects, so it runs in tests without Faust."""

from __future__ import annotations

import ast
from pathlib import Path

import processor
from processor import faust_adapter as fa
from processor.driver import StateStore

FAUST_PRIVATE = ("_committed_offset", "_read_offset", "on_init_dependencies", "partition_for_key", "spinner")


def test_only_the_adapter_imports_faust_or_reads_its_internals() -> None:
    root = Path(processor.__file__).parent
    offenders = []
    for path in sorted(root.glob("*.py")):
        if path.name == "faust_adapter.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            elif isinstance(node, ast.Attribute) and node.attr in FAUST_PRIVATE:
                names = [node.attr]
            else:
                continue
            offenders += [
                f"{path.name}:{node.lineno} {n}"
                for n in names
                if n in FAUST_PRIVATE or n.split(".")[0] in ("faust", "mode", "aiokafka")
            ]
    assert offenders == []


def test_a_dict_and_a_faust_table_are_state_stores() -> None:
    app = fa.app_class()("t-store", broker="kafka://localhost:1", store="memory://")
    table = fa.create_table(app, "targets", 4, lambda _key: 3)
    assert isinstance({}, StateStore) and isinstance(table, StateStore)
    assert table.partition_for_key(b"10.0.0.1") == 3  # the contract's partition, not aiokafka's
    assert table.get(b"10.0.0.1") is None and table.get(b"10.0.0.1", b"-") == b"-"
    table.data[b"10.0.0.2"] = b"x"  # as a recovered changelog entry is (no changelog write here)
    assert table.get(b"10.0.0.2") == b"x" and b"10.0.0.2" in table
    app.on_init_dependencies()  # what starting the app does: its sensors registered
    assert [type(s).__name__ for s in app.sensors] == ["Sensor"]  # a no-op sensor, no Monitor


def test_the_apps_producer_is_idempotent() -> None:
    """Faust asks aiokafka for idempotence only in transactions (exactly_once); the worker's one producer
    is idempotent without them (issue 15: a send retried after a leader's kill -9 wrote a decision twice)."""
    import asyncio

    app = fa.app_class()("t-idem", broker="kafka://localhost:1", store="memory://")
    assert not app.in_transaction

    async def created() -> object:  # aiokafka creates its producer in a running loop (not started here)
        return app.producer._new_producer()

    producer = asyncio.run(created())
    assert producer._txn_manager is not None and producer._txn_manager.transactional_id is None
    assert producer._sender._acks == -1  # acks=all, what idempotence requires
