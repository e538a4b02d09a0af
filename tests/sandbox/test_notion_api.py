"""The Notion sandbox behaves like Notion: page objects, errors, rate limit, signed webhook events, truth."""

from __future__ import annotations

import hashlib
import hmac
import re
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import orjson
import pytest

from sandbox.notion_data import NotionDataset
from sandbox.process import SandboxProcess, start_notion_sandbox
from tests.polling import wait_until

TOKEN = "notion-test-token"
SECRET = "secret_notion-test-verification"
ANCHOR = "2026-03-15T12:00:00+00:00"
NOTION_TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
#: Short redelivery pauses, so retries finish within a test.
RETRIES = (0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Received:
    """One request the receiver got: its path, headers (lower-case names) and raw body."""

    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        value: dict[str, Any] = orjson.loads(self.body)
        return value


class Receiver:
    """A webhook endpoint on loopback that records every POST and answers the statuses queued in
    ``answers`` (then 200)."""

    def __init__(self) -> None:
        self.requests: list[Received] = []
        self.answers: deque[int] = deque()
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    headers = {name.lower(): value for name, value in self.headers.items()}
                    receiver.requests.append(Received(self.path, headers, body))
                    status = receiver.answers.popleft() if receiver.answers else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/webhooks/notion"

    def received(self) -> list[Received]:
        with self._lock:
            return list(self.requests)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def signature(body: bytes, secret: str) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def notion() -> Iterator[SandboxProcess]:
    """A sandbox whose rate limit never bites; tests point its webhook at their own receiver."""
    with start_notion_sandbox(
        pages=30,
        seed=5,
        anchor=ANCHOR,
        token=TOKEN,
        requests_per_second=1000,
        burst=1000,
        delivery_retry_seconds=RETRIES,
    ) as sandbox:
        yield sandbox


@pytest.fixture
def make_notion() -> Iterator[Callable[..., SandboxProcess]]:
    """Factory: a private sandbox with the given options, stopped after the test."""
    started: list[SandboxProcess] = []

    def make(**options: Any) -> SandboxProcess:
        defaults: dict[str, Any] = {"pages": 10, "seed": 3, "token": TOKEN}
        sandbox = start_notion_sandbox(**(defaults | options))
        started.append(sandbox)
        return sandbox

    yield make
    for sandbox in started:
        sandbox.stop()


def get_page(
    sandbox: SandboxProcess, page_id: str, *, version: str | None = "2025-09-03", token: str | None = TOKEN
) -> httpx.Response:
    headers = {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    if version is not None:
        headers["Notion-Version"] = version
    return httpx.get(f"{sandbox.base_url}/v1/pages/{page_id}", headers=headers, timeout=10)


def admin(sandbox: SandboxProcess, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    response = httpx.request(method, f"{sandbox.base_url}/_sandbox/{path}", json=body, timeout=10)
    response.raise_for_status()
    return response.json()


def pages_by_parent(sandbox: SandboxProcess, parent_type: str) -> list[dict[str, Any]]:
    return [
        p
        for p in admin(sandbox, "GET", "pages")
        if p["parent_type"] == parent_type and not p["purged"] and not p["in_trash"]
    ]


def subscribe(sandbox: SandboxProcess, receiver: Receiver) -> None:
    admin(sandbox, "POST", "webhook", {"url": receiver.url, "verification_token": SECRET})


def event(sandbox: SandboxProcess, **body: Any) -> dict[str, Any]:
    result: dict[str, Any] = admin(sandbox, "POST", "events", body)
    return result


def settled(sandbox: SandboxProcess, event_id: str) -> list[dict[str, Any]]:
    """Wait until every delivery of ``event_id`` is acknowledged or failed; returns them."""

    def done() -> list[dict[str, Any]]:
        found = [d for d in admin(sandbox, "GET", "deliveries")["deliveries"] if d["event_id"] == event_id]
        return found if found and all(d["state"] != "pending" for d in found) else []

    return wait_until(done, timeout_seconds=10, message=f"deliveries of event {event_id} never settled")


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["object"] == "error"
    assert body["status"] == status
    assert body["code"] == code
    assert body["message"]
    assert uuid.UUID(body["request_id"])


# -- the page object -------------------------------------------------------------------------------


def test_database_page_has_notions_shape_under_both_versions(notion: SandboxProcess) -> None:
    # Given a page in a database
    page_id = pages_by_parent(notion, "database")[0]["id"]
    info = admin(notion, "GET", "info")
    databases = {d["id"]: d["data_source_id"] for d in info["databases"]}

    # When it is read with the data-source version and the classic one (by its undashed id too)
    new = get_page(notion, page_id).json()
    classic = get_page(notion, page_id.replace("-", ""), version="2022-06-28").json()

    # Then it is a page object with Notion's fields and times
    assert new["object"] == "page"
    assert new["id"] == classic["id"] == page_id
    for key in ("created_by", "last_edited_by"):
        assert new[key]["object"] == "user"
        assert uuid.UUID(new[key]["id"])
    assert NOTION_TIME.match(new["created_time"])
    assert NOTION_TIME.match(new["last_edited_time"])
    assert new["created_time"] <= new["last_edited_time"]
    assert new["archived"] is False
    assert new["in_trash"] is False
    assert new["cover"] is None
    assert new["public_url"] is None
    assert new["url"].startswith("https://www.notion.so/")
    assert new["url"].endswith(page_id.replace("-", ""))
    assert uuid.UUID(new["request_id"])
    # And its parent follows the version: a data source from 2025-09-03, the database before
    assert new["parent"]["type"] == "data_source_id"
    assert databases[new["parent"]["database_id"]] == new["parent"]["data_source_id"]
    assert classic["parent"] == {"type": "database_id", "database_id": new["parent"]["database_id"]}
    # And exactly one property is the title, beside select, number, checkbox, date and rich text
    types = sorted(value["type"] for value in new["properties"].values())
    assert types == ["checkbox", "date", "number", "rich_text", "select", "title"]
    for name, value in new["properties"].items():
        assert value["id"], name
        assert value["type"] in value
    title = next(v for v in new["properties"].values() if v["type"] == "title")
    assert title["id"] == "title"
    assert all(item["type"] == "text" and item["plain_text"] for item in title["title"])


def test_pages_outside_databases_have_page_or_workspace_parents(notion: SandboxProcess) -> None:
    # Given the generated pages
    listed = admin(notion, "GET", "pages")
    kinds = {p["parent_type"] for p in listed}
    assert kinds == {"database", "page", "workspace"}

    # When one under a page and one at the root are read
    under_page = get_page(notion, next(p["id"] for p in listed if p["parent_type"] == "page")).json()
    at_root = get_page(notion, next(p["id"] for p in listed if p["parent_type"] == "workspace")).json()

    # Then their parents are Notion's page and workspace parents, and their only property the title
    assert under_page["parent"]["type"] == "page_id"
    assert uuid.UUID(under_page["parent"]["page_id"])
    assert at_root["parent"] == {"type": "workspace", "workspace": True}
    for page in (under_page, at_root):
        assert list(page["properties"]) == ["title"]
        assert page["properties"]["title"]["type"] == "title"


def test_edits_move_last_edited_time_forward_unless_ties_are_allowed() -> None:
    # Given two datasets with minute precision, one letting edits in one minute tie as in Notion
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    strict = NotionDataset(seed=2, pages=5, anchor=anchor, precision_seconds=60)
    tying = NotionDataset(seed=2, pages=5, anchor=anchor, precision_seconds=60, edit_times_may_tie=True)
    now_ms = int(datetime(2026, 1, 2, 9, 30, 10, tzinfo=UTC).timestamp() * 1000)

    # When one page of each is edited twice within the same minute
    stamps: dict[str, list[int]] = {}
    for name, data in (("strict", strict), ("tying", tying)):
        page = next(iter(data.pages.values()))
        data.update_properties(page, now_ms)
        first = page.last_edited_time
        data.update_content(page, now_ms + 20_000)
        stamps[name] = [first, page.last_edited_time]

    # Then both are floored to the minute; by default the second edit moves a minute on, else it ties
    minute = now_ms - now_ms % 60_000
    assert stamps["strict"] == [minute, minute + 60_000]
    assert stamps["tying"] == [minute, minute]


def test_same_seed_gives_the_same_pages() -> None:
    # Given two datasets from one seed and anchor, and one from another seed
    anchor = datetime(2026, 1, 1, tzinfo=UTC)
    first, second = (NotionDataset(seed=9, pages=25, anchor=anchor) for _ in range(2))
    other = NotionDataset(seed=10, pages=25, anchor=anchor)

    # Then the first two render identically, the third differently
    def render(data: NotionDataset) -> list[dict[str, Any]]:
        return [page.to_api("2025-09-03") for page in data.pages.values()]

    assert render(first) == render(second)
    assert render(first) != render(other)


# -- errors ----------------------------------------------------------------------------------------


def test_wrong_or_missing_token_is_401(notion: SandboxProcess) -> None:
    page_id = pages_by_parent(notion, "database")[0]["id"]
    assert_error(get_page(notion, page_id, token="not-the-token"), 401, "unauthorized")
    assert_error(get_page(notion, page_id, token=None), 401, "unauthorized")


def test_missing_or_unknown_version_is_400(notion: SandboxProcess) -> None:
    page_id = pages_by_parent(notion, "database")[0]["id"]
    assert_error(get_page(notion, page_id, version=None), 400, "missing_version")
    assert_error(get_page(notion, page_id, version="1999-01-01"), 400, "validation_error")


def test_unknown_page_is_404_and_a_malformed_id_400(notion: SandboxProcess) -> None:
    assert_error(get_page(notion, str(uuid.uuid4())), 404, "object_not_found")
    assert_error(get_page(notion, "not-a-page-id"), 400, "validation_error")
    assert_error(httpx.get(f"{notion.base_url}/v1/nothing", timeout=10), 400, "invalid_request_url")


def test_a_burst_past_the_bucket_gets_429_with_retry_after(
    make_notion: Callable[..., SandboxProcess],
) -> None:
    # Given an integration allowed a burst of 5, refilled at one request every ten seconds
    sandbox = make_notion(requests_per_second=0.1, burst=5)
    page_id = pages_by_parent(sandbox, "database")[0]["id"]

    # When 8 requests go back to back
    responses = [get_page(sandbox, page_id) for _ in range(8)]

    # Then the first 5 pass and the rest are rate limited with a whole-seconds Retry-After
    assert [r.status_code for r in responses[:5]] == [200] * 5
    for response in responses[5:]:
        assert_error(response, 429, "rate_limited")
        assert re.fullmatch(r"[1-9]\d*", response.headers["retry-after"])
    stats = admin(sandbox, "GET", "stats")
    assert stats["rate_limited"] == 3
    assert stats["requests"]["GET /v1/pages/{page_id}"] == {"200": 5, "429": 3}


def test_faults_fail_api_requests_but_never_admin_ones(notion: SandboxProcess) -> None:
    page_id = pages_by_parent(notion, "database")[0]["id"]
    try:
        # Given the next two requests set to fail, one with each 5xx
        admin(notion, "POST", "faults", {"fail_next": 1, "fail_status": 503})
        assert_error(get_page(notion, page_id), 503, "service_unavailable")
        admin(notion, "POST", "faults", {"fail_next": 1, "fail_status": 500})
        # Then admin endpoints still answer, and the failure lands on the API request
        assert admin(notion, "GET", "info")["ready"] is True
        assert_error(get_page(notion, page_id), 500, "internal_server_error")
        # And with every request set to fail, every one does
        admin(notion, "POST", "faults", {"rate_503": 1.0})
        assert_error(get_page(notion, page_id), 503, "service_unavailable")
        # And a bad fault setting is refused
        bad = httpx.post(f"{notion.base_url}/_sandbox/faults", json={"rate_500": 2}, timeout=10)
        assert bad.status_code == 400
    finally:
        admin(notion, "POST", "faults", {"rate_500": 0, "rate_503": 0, "fail_next": 0})
    assert get_page(notion, page_id).status_code == 200


# -- webhooks --------------------------------------------------------------------------------------


def test_handshake_sends_the_token_without_a_signature(notion: SandboxProcess, receiver: Receiver) -> None:
    # Given a subscription pointing at the receiver
    subscribe(notion, receiver)

    # When the verification request is sent
    answer = admin(notion, "POST", "webhook/handshake")

    # Then the receiver got the token alone, unsigned, and the sandbox reports its answer
    assert answer == {"url": receiver.url, "status": 200, "body": ""}
    (request,) = receiver.received()
    assert request.path == "/webhooks/notion"
    assert request.json() == {"verification_token": SECRET}
    assert "x-notion-signature" not in request.headers
    assert request.headers["content-type"] == "application/json"


def test_properties_updated_changes_the_page_then_delivers_a_signed_event(
    notion: SandboxProcess, receiver: Receiver
) -> None:
    # Given a database page and a subscription
    subscribe(notion, receiver)
    page_id = pages_by_parent(notion, "database")[1]["id"]
    before = get_page(notion, page_id).json()

    # When its properties are updated
    made = event(notion, type="page.properties_updated", page_id=page_id)
    deliveries = settled(notion, made["event"]["id"])

    # Then the page changed: the named properties differ and last_edited_time moved forward
    after = get_page(notion, page_id).json()
    assert after["last_edited_time"] > before["last_edited_time"]
    changed = set(made["event"]["data"]["updated_properties"])
    assert changed
    for name, value in after["properties"].items():
        assert (value != before["properties"][name]) == (value["id"] in changed), name
    assert made["page"]["properties"] == after["properties"]

    # And one signed event arrived, in Notion's shape, acknowledged at the first attempt
    assert [(d["copy"], d["state"], d["statuses"]) for d in deliveries] == [("event", "acknowledged", [200])]
    (request,) = receiver.received()
    assert request.headers["content-type"] == "application/json"
    assert hmac.compare_digest(request.headers["x-notion-signature"], signature(request.body, SECRET))
    body = request.json()
    assert body == made["event"]
    assert uuid.UUID(body["id"])
    assert NOTION_TIME.match(body["timestamp"])
    assert body["type"] == "page.properties_updated"
    assert body["entity"] == {"id": page_id, "type": "page"}
    assert body["attempt_number"] == 1
    assert body["api_version"] == "2025-09-03"
    assert body["authors"] == [{"id": after["last_edited_by"]["id"], "type": "person"}]
    for key in ("workspace_id", "subscription_id", "integration_id"):
        assert uuid.UUID(body[key])
    assert body["workspace_name"]
    parent = after["parent"]
    assert body["data"]["parent"] == {
        "id": parent["database_id"],
        "type": "database",
        "data_source_id": parent["data_source_id"],
    }


def test_unacknowledged_events_are_redelivered_and_resigned(
    notion: SandboxProcess, receiver: Receiver
) -> None:
    # Given a receiver that fails twice before it acknowledges
    subscribe(notion, receiver)
    receiver.answers.extend([500, 503])

    # When a page's content is updated
    made = event(notion, type="page.content_updated", page_id=pages_by_parent(notion, "page")[0]["id"])
    (delivery,) = settled(notion, made["event"]["id"])

    # Then it took three attempts, each numbered and signed over its own body
    assert delivery["statuses"] == [500, 503, 200]
    assert delivery["state"] == "acknowledged"
    requests = receiver.received()
    assert [r.json()["attempt_number"] for r in requests] == [1, 2, 3]
    assert {r.json()["id"] for r in requests} == {made["event"]["id"]}
    for request in requests:
        assert request.headers["x-notion-signature"] == signature(request.body, SECRET)
    updated = requests[0].json()["data"]["updated_blocks"]
    assert updated
    assert all(block["type"] == "block" for block in updated)


def test_a_receiver_that_never_acknowledges_exhausts_the_schedule(
    notion: SandboxProcess, receiver: Receiver
) -> None:
    # Given a receiver that always fails
    subscribe(notion, receiver)
    receiver.answers.extend([500] * 10)
    page_id = pages_by_parent(notion, "workspace")[0]["id"]

    # When an event is made
    made = event(notion, type="page.properties_updated", page_id=page_id)
    (delivery,) = settled(notion, made["event"]["id"])

    # Then every attempt of the schedule was made, and the delivery failed
    assert delivery["statuses"] == [500] * (len(RETRIES) + 1)
    assert delivery["state"] == "failed"


def test_duplicate_and_forged_copies(notion: SandboxProcess, receiver: Receiver) -> None:
    # Given a receiver that refuses the first request it gets (the forged copy)
    subscribe(notion, receiver)
    receiver.answers.append(401)

    # When an event is sent with a forged copy first and a duplicate after
    made = event(
        notion,
        type="page.properties_updated",
        page_id=pages_by_parent(notion, "database")[2]["id"],
        duplicate=True,
        bad_signature=True,
    )
    deliveries = settled(notion, made["event"]["id"])

    # Then three copies of one event arrived: forged (refused, never retried), genuine, duplicate
    assert [(d["copy"], d["statuses"]) for d in deliveries] == [
        ("bad_signature", [401]),
        ("event", [200]),
        ("duplicate", [200]),
    ]
    forged, genuine, duplicate = receiver.received()
    assert forged.body == genuine.body == duplicate.body
    assert forged.headers["x-notion-signature"] != signature(forged.body, SECRET)
    assert genuine.headers["x-notion-signature"] == duplicate.headers["x-notion-signature"]
    assert genuine.headers["x-notion-signature"] == signature(genuine.body, SECRET)


def test_created_deleted_undeleted_moved_and_purged_pages(notion: SandboxProcess, receiver: Receiver) -> None:
    subscribe(notion, receiver)

    # When a page is created, it exists
    created = event(notion, type="page.created")
    page_id = created["event"]["entity"]["id"]
    page = get_page(notion, page_id).json()
    assert page["created_time"] == page["last_edited_time"]
    assert created["event"]["data"]["parent"]["type"] in ("database", "page", "space")

    # When it is deleted, it is served from the trash
    event(notion, type="page.deleted", page_id=page_id)
    trashed = get_page(notion, page_id).json()
    assert (trashed["in_trash"], trashed["archived"]) == (True, True)
    assert trashed["last_edited_time"] > page["last_edited_time"]

    # When it is restored, it is back
    event(notion, type="page.undeleted", page_id=page_id)
    restored = get_page(notion, page_id).json()
    assert (restored["in_trash"], restored["archived"]) == (False, False)
    assert restored["last_edited_time"] > trashed["last_edited_time"]

    # When it is moved, its parent is another page or the root, and the event names the new one
    moved = event(notion, type="page.moved", page_id=page_id)
    after_move = get_page(notion, page_id).json()
    assert after_move["parent"]["type"] in ("page_id", "workspace")
    assert after_move["parent"].get("page_id") != page_id
    assert moved["event"]["data"]["parent"]["type"] in ("page", "space")

    # When it is purged, it is gone, and it cannot be restored
    purged = event(notion, type="page.deleted", page_id=page_id, purge=True)
    assert purged["page"] is None
    assert_error(get_page(notion, page_id), 404, "object_not_found")
    again = httpx.post(
        f"{notion.base_url}/_sandbox/events", json={"type": "page.undeleted", "page_id": page_id}, timeout=10
    )
    assert again.status_code == 404
    wait_until(
        lambda: admin(notion, "GET", "deliveries")["pending"] == 0,
        timeout_seconds=10,
        message="deliveries still pending",
    )


def test_events_need_a_known_type_and_a_subscription(make_notion: Callable[..., SandboxProcess]) -> None:
    sandbox = make_notion()
    unsubscribed = httpx.post(
        f"{sandbox.base_url}/_sandbox/events", json={"type": "page.created"}, timeout=10
    )
    assert unsubscribed.status_code == 409
    admin(sandbox, "POST", "webhook", {"url": "http://127.0.0.1:9/", "verification_token": None})
    unknown = httpx.post(f"{sandbox.base_url}/_sandbox/events", json={"type": "page.locked"}, timeout=10)
    assert unknown.status_code == 400
    hook = admin(sandbox, "GET", "webhook")
    assert hook["verification_token"].startswith("secret_")


# -- truth -----------------------------------------------------------------------------------------


def test_truth_lists_the_pages_acknowledged_events_named(
    make_notion: Callable[..., SandboxProcess], receiver: Receiver
) -> None:
    # Given a sandbox delivering to the receiver from start-up
    sandbox = make_notion(
        pages=12, webhook_url=receiver.url, verification_token=SECRET, delivery_retry_seconds=RETRIES
    )
    database_pages = pages_by_parent(sandbox, "database")
    assert len(database_pages) >= 3

    # When one page is edited, one purged, one edited while the receiver refuses every attempt,
    # and a batch of random events follows
    edited = event(sandbox, type="page.properties_updated", page_id=database_pages[0]["id"])
    purged = event(sandbox, type="page.deleted", page_id=database_pages[1]["id"], purge=True)
    for made in (edited, purged):
        settled(sandbox, made["event"]["id"])
    receiver.answers.extend([500] * (len(RETRIES) + 1))
    refused = event(sandbox, type="page.properties_updated", page_id=database_pages[2]["id"])
    settled(sandbox, refused["event"]["id"])
    batch = admin(sandbox, "POST", "events/batch", {"count": 8})["events"]
    assert len(batch) == 8
    wait_until(
        lambda: admin(sandbox, "GET", "deliveries")["pending"] == 0,
        timeout_seconds=15,
        message="batch deliveries still pending",
    )

    # Then the truth has exactly the pages some acknowledged event named
    rows = {row["id"]: row for row in admin_ndjson(sandbox, "truth/pages")}
    acknowledged = {
        d["page_id"]
        for d in admin(sandbox, "GET", "deliveries")["deliveries"]
        if d["state"] == "acknowledged" and d["copy"] != "bad_signature"
    }
    assert set(rows) == acknowledged
    assert database_pages[2]["id"] not in rows or database_pages[2]["id"] in {e["page_id"] for e in batch}
    # And a live page's row is its API object as the warehouse keeps it
    page = get_page(sandbox, database_pages[0]["id"]).json()
    row = rows[page["id"]]
    assert row == {
        "id": page["id"],
        "parent_type": "data_source_id",
        "parent_id": page["parent"]["data_source_id"],
        "title": "".join(item["plain_text"] for item in title_property(page)["title"]),
        "properties": orjson.dumps(page["properties"], option=orjson.OPT_SORT_KEYS).decode(),
        "url": page["url"],
        "created_time": page["created_time"],
        "last_edited_time": page["last_edited_time"],
        "archived": False,
        "in_trash": False,
        "is_deleted": False,
    }
    # And the purged page is deleted, with the classic version naming databases as parents
    assert rows[database_pages[1]["id"]]["is_deleted"] is True
    classic = {row["id"]: row for row in admin_ndjson(sandbox, "truth/pages?notion_version=2022-06-28")}
    assert classic[page["id"]]["parent_type"] == "database_id"
    assert classic[page["id"]]["parent_id"] == page["parent"]["database_id"]


def title_property(page: dict[str, Any]) -> dict[str, Any]:
    (title,) = (value for value in page["properties"].values() if value["type"] == "title")
    return title


def admin_ndjson(sandbox: SandboxProcess, path: str) -> list[dict[str, Any]]:
    response = httpx.get(f"{sandbox.base_url}/_sandbox/{path}", timeout=10)
    response.raise_for_status()
    return [orjson.loads(line) for line in response.content.splitlines() if line]
