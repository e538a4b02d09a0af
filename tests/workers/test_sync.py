"""The sync engine against the real Square sandbox and a real Redis, with an in-memory sink.

The sink here is a test double that keeps rows by key with the warehouse MERGE's newer-version-wins
rule and treats a repeated ``batch_id`` as a job that already ran; the BigQuery sink itself is tested
in ``tests/workers/sinks``. A few source shapes the sandbox never serves (a malformed record, a
record met twice, a failure on the second page) go through ``httpx.MockTransport``.
"""

from __future__ import annotations

import itertools
import json
import math
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
import redis
from pydantic import SecretStr
from structlog.testing import capture_logs

from sandbox.process import SandboxProcess, start_square_sandbox
from schemas.messages import BackfillRequest, BackfillWindow
from schemas.settings import Settings
from schemas.tables import REJECTS, TableSpec
from workers.errors import SourceUnavailable, WarehouseUnavailable
from workers.sources.square import SquareClient
from workers.sources.square_streams import SquareStreams
from workers.state import StateStore
from workers.sync import SyncResult, plan_backfill, run_incremental, run_window

TOKEN = "sq-sync-test-token-51a2"


class MemorySink:
    """Rows by key, newer version wins (like the MERGE); a batch id seen before is not applied again."""

    def __init__(self) -> None:
        self.tables: dict[str, dict[tuple[Any, ...], dict[str, Any]]] = {}
        self.writes: list[tuple[str, str, list[dict[str, Any]]]] = []
        self.fail_on_write: int | None = None
        self.before_write: Callable[[int], None] | None = None
        self._lock = threading.Lock()

    def write(self, spec: TableSpec, rows: Iterable[Mapping[str, Any]], *, batch_id: str) -> object:
        with self._lock:
            number = len(self.writes) + 1
        if self.before_write is not None:
            self.before_write(number)
        if self.fail_on_write == number:
            raise WarehouseUnavailable("injected warehouse failure", system="bigquery")
        with self._lock:
            self.writes.append((spec.name, batch_id, [dict(row) for row in rows]))
            if any(batch == batch_id for _, batch, _ in self.writes[:-1]):
                return None
            table = self.tables.setdefault(spec.name, {})
            for row in rows:
                key = tuple(row[column] for column in spec.key)
                old = table.get(key)
                if old is None or (spec.version_column and _version(row, spec) > _version(old, spec)):
                    table[key] = dict(row)
        return None

    def rows(self, table: str) -> dict[Any, dict[str, Any]]:
        """One table's rows by their (single-column) key."""
        return {key[0]: row for key, row in self.tables.get(table, {}).items()}

    def batch_sizes(self, table: str) -> list[int]:
        return [len(rows) for name, _, rows in self.writes if name == table]


def _version(row: Mapping[str, Any], spec: TableSpec) -> Any:
    value = row[spec.version_column or ""]
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _cents(value: str | None) -> int | None:
    return None if value is None else int(Decimal(value) * 100)


def _instant(value: str) -> datetime:
    return datetime.fromisoformat(value)


# -- fixtures ----------------------------------------------------------------------------------------


@pytest.fixture
def make_sandbox() -> Iterator[Callable[..., SandboxProcess]]:
    started: list[SandboxProcess] = []

    def make(**options: Any) -> SandboxProcess:
        options = {"payments": 1_500, "customers": 120, "items": 60, "short_page_rate": 0.1, **options}
        process = start_square_sandbox(token=TOKEN, **options)
        started.append(process)
        return process

    yield make
    for process in started:
        process.stop()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    client = httpx.Client()
    yield client
    client.close()


@pytest.fixture
def state(redis_url: str) -> Iterator[StateStore]:
    client = redis.Redis.from_url(redis_url)
    yield StateStore(client)
    client.close()


def _client(http: httpx.Client, base_url: str) -> SquareClient:
    return SquareClient(
        http, base_url=base_url, token=SecretStr(TOKEN), square_version="2025-08-20", timeout_seconds=10
    )


def _settings(**overrides: Any) -> Settings:
    return Settings(**{"batch_max_rows": 50_000, "square_location_ids": [], **overrides})


def _sandbox_clock(sandbox: SandboxProcess) -> Callable[[], datetime]:
    def now() -> datetime:
        return _instant(sandbox.admin.info()["now"])

    return now


def _sync(
    stream: str,
    *,
    client: SquareClient,
    sink: MemorySink,
    state: StateStore,
    settings: Settings,
    **extra: Any,
) -> SyncResult:
    return run_incremental(
        source=SquareStreams(client, settings),
        sink=sink,
        state=state,
        stream=stream,
        settings=settings,
        message_id="msg-1",
        **extra,
    )


def _assert_payments_equal_truth(sink: MemorySink, truth: list[dict[str, Any]]) -> None:
    rows = sink.rows("square_payments")
    assert sorted(rows) == sorted(payment["id"] for payment in truth)
    for expected in truth:
        row = rows[expected["id"]]
        assert _cents(row["amount"]) == expected["amount_cents"], expected["id"]
        assert _cents(row["tip_amount"]) == expected["tip_cents"]
        assert _cents(row["total_amount"]) == expected["total_cents"]
        assert _cents(row["refunded_amount"]) == expected["refunded_cents"]
        assert _instant(row["updated_at"]) == _instant(expected["updated_at"])
        assert _instant(row["created_at"]) == _instant(expected["created_at"])
        for column in ("status", "currency", "customer_id", "location_id", "order_id", "source_type"):
            assert row[column] == expected[column], (expected["id"], column)
        assert row["card_brand"] == expected["card_brand"]
        assert row["receipt_url"] == expected["receipt_url"]


# -- full and incremental reads against the sandbox ---------------------------------------------------


def test_a_first_sync_reads_every_stream_whole_and_equals_the_truth(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given a sandbox with payments at three locations over two years, and no checkpoint
    sandbox = make_sandbox()
    client, sink, settings = _client(http, sandbox.base_url), MemorySink(), _settings(batch_max_rows=400)
    started = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)

    # When each stream is synced
    results = {
        stream: _sync(stream, client=client, sink=sink, state=state, settings=settings, now=lambda: started)
        for stream in ("payments", "items", "customers")
    }

    # Then payments equal the truth to the cent, at every location and older than a year included
    _assert_payments_equal_truth(sink, sandbox.admin.truth("payments"))
    assert results["payments"].rows_written == len(sink.rows("square_payments"))
    assert results["payments"].batches == math.ceil(results["payments"].rows_written / 400)

    # And every catalog variation (deleted ones flagged) equals the truth
    items = sink.rows("square_items")
    item_truth = sandbox.admin.truth("items")
    assert sorted(items) == sorted(row["variation_id"] for row in item_truth)
    for expected in item_truth:
        row = items[expected["variation_id"]]
        assert _cents(row["price"]) == expected["price_cents"]
        assert (row["is_deleted"], row["available"], row["version"]) == (
            expected["is_deleted"],
            expected["available"],
            expected["version"],
        )
        assert (row["item_id"], row["name"], row["variation_name"], row["sku"], row["category_id"]) == (
            expected["item_id"],
            expected["name"],
            expected["variation_name"],
            expected["sku"],
            expected["category_id"],
        )

    # And customers equal the truth, without personal data
    customers = sink.rows("square_customers")
    customer_truth = sandbox.admin.truth("customers")
    assert sorted(customers) == sorted(row["id"] for row in customer_truth)
    for expected in customer_truth:
        row = customers[expected["id"]]
        assert (row["version"], row["creation_source"], row["reference_id"], row["group_ids"]) == (
            expected["version"],
            expected["creation_source"],
            expected["reference_id"],
            expected["group_ids"],
        )
        assert "email_address" not in row

    # And each stream's checkpoint is the sync's start time, committed with the rows' message id
    for stream, result in results.items():
        checkpoint = state.get_checkpoint("square", stream)
        assert checkpoint is not None
        assert checkpoint.checkpoint == started
        assert checkpoint.last_success == started
        assert result.rows_rejected == 0
        assert not result.coalesced
    assert all(row["_message_id"] == "msg-1" for row in sink.rows("square_payments").values())


def test_an_incremental_sync_picks_up_new_and_changed_payments_including_ones_older_than_a_year(
    make_sandbox: Callable[..., SandboxProcess], state: StateStore
) -> None:
    # Given a warehouse synced in full, on the source's clock
    sandbox = make_sandbox(payments=3_000)
    requests: list[httpx.Request] = []
    with httpx.Client(event_hooks={"request": [requests.append]}) as recording:
        client, sink = _client(recording, sandbox.base_url), MemorySink()
        settings = _settings(incremental_lookback_seconds=900)
        clock = _sandbox_clock(sandbox)
        first = _sync("payments", client=client, sink=sink, state=state, settings=settings, now=clock)
        first_checkpoint = state.get_checkpoint("square", "payments")
        assert first_checkpoint is not None

        # When an hour passes with new payments and changes to old ones, and an incremental sync runs
        changes = sandbox.admin.advance(3600, new_payments=40, changed_payments=30)
        requests.clear()
        second = _sync("payments", client=client, sink=sink, state=state, settings=settings, now=clock)

    # Then the warehouse equals the truth again, changes to payments created over a year ago included
    truth = sandbox.admin.truth("payments")
    _assert_payments_equal_truth(sink, truth)
    year_ago = _instant(changes["now"]) - timedelta(days=365)
    by_id = {payment["id"]: payment for payment in truth}
    old_changed = [pid for pid in changes["changed"] if _instant(by_id[pid]["created_at"]) < year_ago]
    assert old_changed, "the sandbox changed no payment older than a year"
    assert set(changes["created"]) | set(changes["changed"]) <= set(sink.rows("square_payments"))

    # And it read only what changed since the checkpoint minus the lookback, from the start of history
    assert second.rows_read < first.rows_read / 5
    since = first_checkpoint.checkpoint - timedelta(seconds=900)  # type: ignore[operator]
    payment_requests = [r for r in requests if r.url.path == "/v2/payments"]
    assert payment_requests
    for request in payment_requests:
        assert _instant(request.url.params["updated_at_begin_time"]) == since
        assert request.url.params["begin_time"] == "2010-01-01T00:00:00Z"
        assert request.url.params["sort_field"] == "UPDATED_AT"
    checkpoint = state.get_checkpoint("square", "payments")
    assert checkpoint is not None
    assert checkpoint.checkpoint == _instant(changes["now"])


def test_configured_locations_are_read_without_listing_locations(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given a single configured location
    sandbox = make_sandbox()
    location = sandbox.admin.info()["locations"][1]
    settings = _settings(square_location_ids=[location])
    sink = MemorySink()

    # When payments are synced
    _sync("payments", client=_client(http, sandbox.base_url), sink=sink, state=state, settings=settings)

    # Then exactly that location's payments were read, and ListLocations was never called
    truth = [payment for payment in sandbox.admin.truth("payments") if payment["location_id"] == location]
    _assert_payments_equal_truth(sink, truth)
    assert "GET /v2/locations" not in sandbox.admin.stats()["requests"]


def test_batches_are_bounded_by_rows(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given a batch limit of 97 rows
    sandbox = make_sandbox()
    sink = MemorySink()

    # When payments are synced
    result = _sync(
        "payments",
        client=_client(http, sandbox.base_url),
        sink=sink,
        state=state,
        settings=_settings(batch_max_rows=97),
    )

    # Then no batch exceeds 97 rows, all but the last are full, and nothing was lost
    sizes = sink.batch_sizes("square_payments")
    assert max(sizes) == 97
    assert sizes[:-1] == [97] * (len(sizes) - 1)
    assert sum(sizes) == result.rows_written == 1_500
    assert result.batches == len(sizes) == math.ceil(1_500 / 97)
    assert len({batch_id for _, batch_id, _ in sink.writes}) == len(sink.writes)


def test_batches_are_bounded_by_bytes(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given a batch limit of 8 KiB
    sandbox = make_sandbox()
    sink = MemorySink()

    # When payments are synced
    result = _sync(
        "payments",
        client=_client(http, sandbox.base_url),
        sink=sink,
        state=state,
        settings=_settings(batch_max_bytes=8 * 1024),
    )

    # Then each batch, as NDJSON, stays within 8 KiB, and nothing was lost
    for _, _, rows in sink.writes:
        assert sum(len(json.dumps(row, separators=(",", ":"))) + 1 for row in rows) <= 8 * 1024
    assert result.batches > 10
    assert sum(sink.batch_sizes("square_payments")) == 1_500


def test_a_failing_sink_leaves_the_checkpoint_where_it_was_and_a_retry_completes(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given a stream with a checkpoint, and a sink that fails on its second write
    sandbox = make_sandbox()
    client = _client(http, sandbox.base_url)
    before = datetime(2020, 1, 1, tzinfo=UTC)
    state.commit_checkpoint("square", "payments", checkpoint=before, started_at=before)
    sink = MemorySink()
    sink.fail_on_write = 2
    settings = _settings(batch_max_rows=100)

    # When payments are synced
    with pytest.raises(WarehouseUnavailable):
        _sync("payments", client=client, sink=sink, state=state, settings=settings)

    # Then the checkpoint did not move, the error is recorded, and no writer thread is left behind
    failed = state.get_checkpoint("square", "payments")
    assert failed is not None
    assert failed.checkpoint == before
    assert failed.last_error is not None
    assert failed.last_error.startswith("WarehouseUnavailable")
    assert not [thread for thread in threading.enumerate() if thread.name == "possync-writer"]
    # Fetching stopped soon after the failure instead of reading everything
    assert len(sink.writes) == 1

    # When the sync is retried with a healthy sink
    sink.fail_on_write = None
    retried = _sync("payments", client=client, sink=sink, state=state, settings=settings)

    # Then it completes, the warehouse equals the truth and the checkpoint moved
    _assert_payments_equal_truth(sink, sandbox.admin.truth("payments"))
    assert retried.rows_written == 1_500
    healed = state.get_checkpoint("square", "payments")
    assert healed is not None
    assert healed.checkpoint is not None
    assert healed.checkpoint > before
    assert healed.last_error is None


def test_a_sync_finding_the_stream_locked_coalesces_without_reading(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given another sync holding the payments lock
    sandbox = make_sandbox()
    sink = MemorySink()
    with state.stream_lock("square", "payments") as held:
        assert held

        # When a payments sync starts
        result = _sync(
            "payments", client=_client(http, sandbox.base_url), sink=sink, state=state, settings=_settings()
        )

    # Then it returns at once flagged coalesced, having read and written nothing
    assert result.coalesced
    assert (result.pages, result.rows_read, result.batches) == (0, 0, 0)
    assert sandbox.admin.stats()["total"] == 0
    assert sink.writes == []
    assert state.get_checkpoint("square", "payments") is None


def test_one_summary_line_is_logged_per_run_without_secrets(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given a sandbox
    sandbox = make_sandbox()

    # When customers are synced
    with capture_logs() as logs:
        result = _sync(
            "customers",
            client=_client(http, sandbox.base_url),
            sink=MemorySink(),
            state=state,
            settings=_settings(),
        )

    # Then one summary event was logged with the counts, and no token
    summaries = [entry for entry in logs if entry["event"] == "incremental_sync_done"]
    assert len(summaries) == 1
    assert summaries[0]["rows_written"] == result.rows_written == 120
    assert summaries[0]["stream"] == "customers"
    assert TOKEN not in repr(logs)


# -- backfill plans and windows ---------------------------------------------------------------------


def test_a_backfill_plan_covers_since_until_exactly_for_every_location(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given a backfill of 100 days and 6 hours in windows of 30 days
    sandbox = make_sandbox()
    locations = sandbox.admin.info()["locations"]
    since = datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    until = since + timedelta(days=100, hours=6)
    request = BackfillRequest(
        request_id="req-7", backfill_id="bf-7", since=since, until=until, window_days=30
    )

    # When it is planned
    windows = plan_backfill(
        source=SquareStreams(_client(http, sandbox.base_url), _settings()),
        state=state,
        request=request,
        settings=_settings(),
    )

    # Then each location's payment windows tile [since, until) with no gap or overlap, 30 days at most each
    payments = [window for window in windows if window.stream == "payments"]
    assert {window.location_id for window in payments} == set(locations)
    for location in locations:
        spans = sorted((w.start, w.end) for w in payments if w.location_id == location)
        assert spans[0][0] == since
        assert spans[-1][1] == until
        assert all(end == next_start for (_, end), (next_start, _) in itertools.pairwise(spans))
        assert all(end - start <= timedelta(days=30) for start, end in spans)  # type: ignore[operator]
        assert len(spans) == 4

    # And items and customers get one whole-stream window each, window ids are unique and carry the request
    assert [w.stream for w in windows if w.stream != "payments"] == ["items", "customers"]
    assert len({w.window_id for w in windows}) == len(windows)
    assert all(w.request_id == "req-7" and w.backfill_id == "bf-7" for w in windows)
    assert payments[0].window_id.startswith(f"payments:{payments[0].location_id}:")

    # And the plan is recorded with every window pending
    plan = state.get_plan("bf-7")
    assert plan is not None
    assert [planned.window for planned in plan.windows] == windows
    assert plan.summary()["missing"] == len(windows)
    assert plan.meta["locations"] == locations


def test_backfill_windows_together_equal_the_truth_and_are_marked_done(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given a plan over the sandbox's whole history, in windows of 200 days
    sandbox = make_sandbox()
    now = _instant(sandbox.admin.info()["now"])
    request = BackfillRequest(
        request_id="req-8", backfill_id="bf-8", since=now - timedelta(days=800), until=now, window_days=200
    )
    client, sink = _client(http, sandbox.base_url), MemorySink()
    windows = plan_backfill(
        source=SquareStreams(client, _settings()), state=state, request=request, settings=_settings()
    )

    # When every window runs
    results = [
        run_window(
            source=SquareStreams(client, _settings()),
            sink=sink,
            state=state,
            window=window,
            settings=_settings(),
            message_id="m",
        )
        for window in windows
    ]

    # Then payments equal the truth, each window holding its location's payments created in [start, end)
    _assert_payments_equal_truth(sink, sandbox.admin.truth("payments"))
    assert len(sink.rows("square_items")) == len(sandbox.admin.truth("items"))
    assert len(sink.rows("square_customers")) == len(sandbox.admin.truth("customers"))
    assert sum(result.rows_written for result in results if result.stream == "payments") == 1_500

    # And the plan shows every window done
    assert state.missing_windows("bf-8") == []


def test_a_window_that_fails_is_marked_failed_and_shown_missing(
    make_sandbox: Callable[..., SandboxProcess], http: httpx.Client, state: StateStore
) -> None:
    # Given a planned backfill and a sandbox answering 500 to everything
    sandbox = make_sandbox()
    now = _instant(sandbox.admin.info()["now"])
    request = BackfillRequest(
        request_id="r", backfill_id="bf-9", since=now - timedelta(days=30), until=now, streams=("customers",)
    )
    client = _client(http, sandbox.base_url)
    [window] = plan_backfill(
        source=SquareStreams(client, _settings()), state=state, request=request, settings=_settings()
    )
    sandbox.admin.set_faults(rate_500=1.0)

    # When the window runs
    with pytest.raises(SourceUnavailable):
        run_window(
            source=SquareStreams(client, _settings()),
            sink=MemorySink(),
            state=state,
            window=window,
            settings=_settings(),
            message_id="m",
        )

    # Then it is failed and missing, and running it again once the source recovered completes it
    plan = state.get_plan("bf-9")
    assert plan is not None
    assert [planned.status for planned in plan.windows] == ["failed"]
    sandbox.admin.clear_faults()
    run_window(
        source=SquareStreams(client, _settings()),
        sink=MemorySink(),
        state=state,
        window=window,
        settings=_settings(),
        message_id="m",
    )
    assert state.missing_windows("bf-9") == []


# -- edge cases through MockTransport -----------------------------------------------------------------


def _payment(payment_id: str, *, updated: str = "2025-06-01T10:00:00Z", cents: int = 1999) -> dict[str, Any]:
    return {
        "id": payment_id,
        "created_at": "2023-02-03T04:05:06.789Z",
        "updated_at": updated,
        "status": "COMPLETED",
        "amount_money": {"amount": cents, "currency": "USD"},
        "total_money": {"amount": cents, "currency": "USD"},
        "location_id": "L1",
        "source_type": "CASH",
    }


class FakePayments:
    """A ListPayments server over fixed pages (for shapes the sandbox never serves)."""

    def __init__(self, pages: list[list[Any]]) -> None:
        self.pages = pages
        self.requested: list[int] = []
        self.failing_page: int | None = None
        self.page_requested = threading.Condition()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        index = int(request.url.params.get("cursor", "0"))
        with self.page_requested:
            self.requested.append(index)
            self.page_requested.notify_all()
        if index == self.failing_page:
            return httpx.Response(
                503, json={"errors": [{"category": "API_ERROR", "code": "SERVICE_UNAVAILABLE"}]}
            )
        body: dict[str, Any] = {"payments": self.pages[index]}
        if index + 1 < len(self.pages):
            body["cursor"] = str(index + 1)
        return httpx.Response(200, json=body)

    def client(self) -> SquareClient:
        http = httpx.Client(transport=httpx.MockTransport(self))
        return SquareClient(
            http,
            base_url="https://square.test",
            token=SecretStr(TOKEN),
            square_version="2025-08-20",
            timeout_seconds=5,
        )


def test_a_malformed_record_becomes_a_reject_row_and_the_rest_still_load(state: StateStore) -> None:
    # Given a page holding a payment without amount_money (with a buyer's e-mail), and a non-object
    bad = {**_payment("P-BAD"), "buyer_email_address": "ada@example.com"}
    del bad["amount_money"]
    fake = FakePayments(
        [[_payment("P1"), bad, _payment("P2")], [_payment("P3"), "not-an-object", ["nor", "this"]]]
    )
    sink = MemorySink()
    settings = _settings(square_location_ids=["L1"])

    # When payments are synced
    result = _sync("payments", client=fake.client(), sink=sink, state=state, settings=settings)

    # Then the good payments loaded, and each bad record is a reject row with its reason
    assert sorted(sink.rows("square_payments")) == ["P1", "P2", "P3"]
    assert (result.rows_read, result.rows_written, result.rows_rejected) == (6, 3, 3)
    rejects = list(sink.tables[REJECTS.name].values())
    by_key = {row["record_key"]: row for row in rejects}
    assert len(by_key) == 3
    assert "P-BAD" in by_key
    assert "amount_money" in by_key["P-BAD"]["reason"]
    assert by_key["P-BAD"]["source"] == "square"
    assert by_key["P-BAD"]["stream"] == "payments"
    assert by_key["P-BAD"]["message_id"] == "msg-1"
    assert json.loads(by_key["P-BAD"]["raw"])["id"] == "P-BAD"
    # Personal data is not copied into the rejects table
    assert "ada@example.com" not in by_key["P-BAD"]["raw"]
    # Records without an id are keyed by their content, so neither hides the other
    anonymous = [row for key, row in by_key.items() if key != "P-BAD"]
    assert all(row["record_key"].startswith("sha256:") for row in anonymous)
    assert all("not an object" in row["reason"] for row in anonymous)
    assert set(rejects[0]) == set(REJECTS.column_names)

    # And the checkpoint advanced: a reject does not block the stream
    assert state.get_checkpoint("square", "payments") is not None


def test_a_record_met_twice_in_one_read_keeps_its_newest_version(state: StateStore) -> None:
    # Given a payment that changed between two pages, so it is served twice
    fake = FakePayments(
        [
            [_payment("P1", updated="2025-06-01T10:00:00Z", cents=100), _payment("P2")],
            [
                _payment("P1", updated="2025-06-01T11:00:00+01:00", cents=100),
                _payment("P1", updated="2025-06-01T10:30:00Z", cents=250),
            ],
        ]
    )
    sink = MemorySink()

    # When payments are synced in one batch
    _sync(
        "payments",
        client=fake.client(),
        sink=sink,
        state=state,
        settings=_settings(square_location_ids=["L1"]),
    )

    # Then the batch held P1 once, at its newest version (timestamps compared as instants)
    [(_, _, rows)] = [write for write in sink.writes if write[0] == "square_payments"]
    assert sorted(row["id"] for row in rows) == ["P1", "P2"]
    assert sink.rows("square_payments")["P1"]["amount"] == "2.50"


def test_batch_ids_repeat_for_the_same_data_and_differ_when_a_version_changed(state: StateStore) -> None:
    # Given the same pages read twice, then with one payment's version changed
    pages = [[_payment(f"P{n:02d}") for n in range(10)]]
    settings = _settings(square_location_ids=["L1"], batch_max_rows=4)
    runs: list[list[str]] = []
    for variant in (
        pages,
        pages,
        [[*pages[0][:5], _payment("P05", updated="2025-07-01T00:00:00Z"), *pages[0][6:]]],
    ):
        sink = MemorySink()
        window = BackfillWindow(
            request_id="r",
            backfill_id="b",
            window_id="payments:L1:w",
            stream="payments",
            location_id="L1",
            start=datetime(2023, 1, 1, tzinfo=UTC),
            end=datetime(2024, 1, 1, tzinfo=UTC),
        )

        # When a window over them runs
        run_window(
            source=SquareStreams(FakePayments(variant).client(), settings),
            sink=sink,
            state=state,
            window=window,
            settings=settings,
            message_id=None,
        )
        runs.append([batch_id for _, batch_id, _ in sink.writes])

    # Then a redelivery derives the same batch ids (so a job re-attaches), and a changed batch a new id
    assert runs[0] == runs[1]
    assert len(runs[0]) == 3
    assert runs[2][0] == runs[0][0]
    assert runs[2][1] != runs[0][1]
    assert runs[2][2] == runs[0][2]
    assert all(batch_id.startswith("payments:payments:L1:w:") for batch_id in runs[0])


def test_fetching_overlaps_with_loading(state: StateStore) -> None:
    # Given six pages of 100 payments, batches of 100 rows, and a sink whose first write waits
    # until the engine has asked for page 4
    fake = FakePayments([[_payment(f"P{page}-{n:03d}") for n in range(100)] for page in range(6)])
    sink = MemorySink()
    overlapped: list[bool] = []

    def hold_first_write(number: int) -> None:
        if number == 1:
            with fake.page_requested:
                overlapped.append(fake.page_requested.wait_for(lambda: 3 in fake.requested, timeout=10))

    sink.before_write = hold_first_write
    settings = _settings(square_location_ids=["L1"], batch_max_rows=100)

    # When payments are synced
    result = _sync("payments", client=fake.client(), sink=sink, state=state, settings=settings)

    # Then the next pages were fetched while the first batch was being written, and all 600 loaded
    assert overlapped == [True]
    assert result.rows_written == 600
    assert result.pages == 6


def test_a_source_failure_mid_read_propagates_and_leaves_the_checkpoint(state: StateStore) -> None:
    # Given a source whose third page fails, and small batches so some were already written
    fake = FakePayments([[_payment(f"P{page}-{n}") for n in range(50)] for page in range(5)])
    fake.failing_page = 2
    sink = MemorySink()
    settings = _settings(square_location_ids=["L1"], batch_max_rows=50)

    # When payments are synced
    with pytest.raises(SourceUnavailable):
        _sync("payments", client=fake.client(), sink=sink, state=state, settings=settings)

    # Then no checkpoint was committed, the failure is recorded, and the writer thread is gone
    failed = state.get_checkpoint("square", "payments")
    assert failed is not None
    assert failed.checkpoint is None
    assert failed.last_error is not None
    assert "503" in failed.last_error
    assert not [thread for thread in threading.enumerate() if thread.name == "possync-writer"]
