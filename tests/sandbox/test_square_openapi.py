"""Every sandbox response and webhook event validates against Square's own OpenAPI schemas, in strict mode.

Square's schemas mark almost nothing required and allow any extra property, so a plain validation
proves little. Here every object schema gets ``additionalProperties: false`` and our own list of
required fields, and every page of full listings of the small dataset is checked, error bodies too,
and the events the sandbox's changes publish (``PaymentUpdatedEvent``, ``CustomerDeletedEvent``...).
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Callable, Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from openapi_schema_validator import OAS30ReadValidator

from sandbox.process import SandboxProcess
from tests.sandbox.conftest import EPOCH_BEGIN, client_for, paginate
from tests.sandbox.test_square_webhooks import Receiver

#: The repository root; Square's spec lives in ``shared/specs`` beside it (CI and development).
REPO_ROOT = Path(__file__).resolve().parents[2]
SPEC_NAME = "square-openapi-2025-08-20.json"
#: Fields we require although Square's schemas leave them optional: what possync relies on.
REQUIRED: dict[str, list[str]] = {
    "Payment": [
        "id",
        "created_at",
        "updated_at",
        "amount_money",
        "total_money",
        "status",
        "location_id",
        "source_type",
        "order_id",
        "receipt_number",
        "version_token",
    ],
    "Money": ["amount", "currency"],
    "Card": ["card_brand", "last_4"],
    "CardPaymentDetails": ["status", "card"],
    "CatalogObject": ["type", "id", "updated_at", "version", "is_deleted", "present_at_all_locations"],
    "CatalogItem": ["name", "variations"],
    "CatalogItemVariation": ["item_id", "name", "sku", "pricing_type"],
    "CatalogCategory": ["name"],
    "Customer": ["id", "created_at", "updated_at", "version", "creation_source"],
    "Location": ["id", "name", "status", "currency", "timezone"],
    "Error": ["category", "code"],
    # Every webhook event: Square's envelope.
    **{
        name: ["merchant_id", "type", "event_id", "created_at", "data"]
        for name in (
            "PaymentCreatedEvent",
            "PaymentUpdatedEvent",
            "CustomerCreatedEvent",
            "CustomerUpdatedEvent",
            "CustomerDeletedEvent",
            "CatalogVersionUpdatedEvent",
        )
    },
    **{
        name: ["type", "id", "object"]
        for name in (
            "PaymentCreatedEventData",
            "PaymentUpdatedEventData",
            "CustomerCreatedEventData",
            "CustomerUpdatedEventData",
            "CustomerDeletedEventData",
        )
    },
}
#: What Square's schemas lack but its own examples send: a deletion event's ``data.deleted`` (in the
#: generic ``EventData`` schema and in the ``CustomerDeletedEvent`` example, not in its data schema).
PATCHES: dict[str, dict[str, Any]] = {
    "CustomerDeletedEventData": {"deleted": {"type": "boolean", "nullable": True}},
}
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
_TIMESTAMP_KEYS = {"created_at", "updated_at", "latest_time", "authorized_at", "captured_at", "voided_at"}
#: The event schema for each event type the sandbox publishes.
EVENT_SCHEMAS = {
    "payment.created": "PaymentCreatedEvent",
    "payment.updated": "PaymentUpdatedEvent",
    "customer.created": "CustomerCreatedEvent",
    "customer.updated": "CustomerUpdatedEvent",
    "customer.deleted": "CustomerDeletedEvent",
    "catalog.version.updated": "CatalogVersionUpdatedEvent",
}


def spec_path() -> Path:
    """Where Square's OpenAPI document is: ``POSSYNC_SQUARE_OPENAPI``, else ``../shared/specs``."""
    # Tests may read the environment; this only locates a fixture file.
    override = os.environ.get("POSSYNC_SQUARE_OPENAPI")
    return Path(override) if override else REPO_ROOT.parent / "shared" / "specs" / SPEC_NAME


def _strict(schema: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """A copy of ``schema`` where every object schema forbids unknown properties."""
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {key: _strict(value) for key, value in out["properties"].items()}
        out.setdefault("additionalProperties", False)
    if isinstance(out.get("items"), dict):
        out["items"] = _strict(out["items"])
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = _strict(out["additionalProperties"])
    if name in REQUIRED:
        out["required"] = sorted(set(out.get("required", [])) | set(REQUIRED[name]))
    return out


@cache
def strict_components() -> dict[str, Any]:
    """``components.schemas`` of Square's spec, made strict (and patched, see :data:`PATCHES`)."""
    schemas = dict(square_spec()["components"]["schemas"])
    for name, properties in PATCHES.items():
        schemas[name] = {**schemas[name], "properties": {**schemas[name]["properties"], **properties}}
    return {"schemas": {name: _strict(schema, name) for name, schema in schemas.items()}}


@cache
def square_spec() -> dict[str, Any]:
    """Square's OpenAPI document, as published."""
    path = spec_path()
    if not path.is_file():
        raise AssertionError(
            f"Square's OpenAPI document is not at {path}: put the shared/ directory beside the repository "
            "or set POSSYNC_SQUARE_OPENAPI to the file"
        )
    spec: dict[str, Any] = json.loads(path.read_text())
    return spec


@cache
def validator(schema_name: str) -> OAS30ReadValidator:
    """A strict validator for one response schema (or ``ErrorResponse``: ``{"errors": [Error]}``)."""
    components = strict_components()
    if schema_name == "ErrorResponse":
        root: dict[str, Any] = {
            "type": "object",
            "properties": {"errors": {"type": "array", "items": {"$ref": "#/components/schemas/Error"}}},
            "required": ["errors"],
            "additionalProperties": False,
        }
    else:
        root = {"$ref": f"#/components/schemas/{schema_name}"}
    return OAS30ReadValidator({**root, "components": components})


def _timestamps(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key in _TIMESTAMP_KEYS and isinstance(value, str):
                yield value
            else:
                yield from _timestamps(value)
    elif isinstance(node, list):
        for value in node:
            yield from _timestamps(value)


def assert_valid(schema_name: str, bodies: list[dict[str, Any]]) -> None:
    """Every body validates strictly against ``schema_name``; timestamps are RFC 3339 ms UTC."""
    assert bodies, "nothing to validate"
    check = validator(schema_name)
    for body in bodies:
        errors = sorted(check.iter_errors(body), key=lambda error: list(error.absolute_path))
        assert not errors, f"{schema_name}: " + "; ".join(
            f"{list(error.absolute_path)}: {error.message}" for error in errors[:5]
        )
        for stamp in _timestamps(body):
            assert _TIMESTAMP.match(stamp), f"{schema_name}: timestamp {stamp!r} is not RFC 3339 with ms"


def test_strict_mode_rejects_an_unknown_property_and_a_missing_required_one(square: SandboxProcess) -> None:
    # Given a real payment
    with client_for(square) as client:
        payment = client.get("/v2/payments").json()["payments"][0]

    # When it gains a property Square's schema lacks, or loses one we require
    extra = copy.deepcopy(payment)
    extra["card_details"]["card"]["nickname"] = "x"
    missing = {key: value for key, value in payment.items() if key != "total_money"}

    # Then strict validation rejects both, and accepts the original
    assert not list(validator("ListPaymentsResponse").iter_errors({"payments": [payment]}))
    assert list(validator("ListPaymentsResponse").iter_errors({"payments": [extra]}))
    assert list(validator("ListPaymentsResponse").iter_errors({"payments": [missing]}))


def test_every_payment_page_and_payment_validates(square: SandboxProcess) -> None:
    # When every location's full history is paged, both orders and by updated_at, and payments fetched by id
    info = square.admin.info()
    pages: list[dict[str, Any]] = []
    with client_for(square) as client:
        for location in info["locations"]:
            for extra in ({"sort_order": "ASC"}, {"sort_field": "UPDATED_AT"}):
                params = {"location_id": location, "begin_time": EPOCH_BEGIN, **extra}
                paginate(client, "GET", "/v2/payments", "payments", params=params, pages=pages)
        ids = [payment["id"] for page in pages[:5] for payment in page["payments"]]
        singles = [client.get(f"/v2/payments/{payment_id}").json() for payment_id in ids]

    # Then each page and each payment validates strictly
    assert sum(len(page.get("payments", [])) for page in pages) == 2 * info["counts"]["payments"]
    assert_valid("ListPaymentsResponse", pages)
    assert_valid("GetPaymentResponse", singles)
    sources = {p["source_type"] for page in pages for p in page["payments"]}
    assert sources == {"CARD", "CASH", "WALLET", "EXTERNAL"}


def test_locations_catalog_and_customers_validate(square: SandboxProcess) -> None:
    with client_for(square) as client:
        # When every endpoint is read in full
        locations = [client.get("/v2/locations").json()]
        catalog: list[dict[str, Any]] = []
        paginate(
            client,
            "GET",
            "/v2/catalog/list",
            "objects",
            params={"types": "ITEM,ITEM_VARIATION,CATEGORY"},
            pages=catalog,
        )
        search: list[dict[str, Any]] = []
        body = {
            "object_types": ["ITEM", "ITEM_VARIATION", "CATEGORY"],
            "include_deleted_objects": True,
            "limit": 200,
        }
        paginate(client, "POST", "/v2/catalog/search", "objects", body=body, pages=search)
        customers: list[dict[str, Any]] = []
        paginate(
            client,
            "GET",
            "/v2/customers",
            "customers",
            params={"count": "true", "limit": 50},
            pages=customers,
        )
        searched: list[dict[str, Any]] = []
        query = {
            "filter": {"updated_at": {"start_at": "2025-01-01T00:00:00Z"}},
            "sort": {"field": "CREATED_AT"},
        }
        paginate(
            client,
            "POST",
            "/v2/customers/search",
            "customers",
            body={"query": query, "count": True},
            pages=searched,
        )

    # Then every page validates strictly
    assert_valid("ListLocationsResponse", locations)
    assert_valid("ListCatalogResponse", catalog)
    assert_valid("SearchCatalogObjectsResponse", search)
    assert_valid("ListCustomersResponse", customers)
    assert_valid("SearchCustomersResponse", searched)
    assert any(obj["is_deleted"] for page in search for obj in page["objects"])


@pytest.mark.parametrize("mode", ["empty", "empty_page"])
def test_final_page_variants_validate(make_square: Callable[..., SandboxProcess], mode: str) -> None:
    # Given a sandbox ending lists with an empty cursor, or with one more empty page
    sandbox = make_square(final_page_mode=mode)

    # When a location is paged to the end
    pages: list[dict[str, Any]] = []
    with client_for(sandbox) as client:
        paginate(client, "GET", "/v2/payments", "payments", pages=pages)
        catalog: list[dict[str, Any]] = []
        paginate(client, "GET", "/v2/catalog/list", "objects", params={"types": "ITEM"}, pages=catalog)

    # Then those last pages validate too
    assert_valid("ListPaymentsResponse", pages)
    assert_valid("ListCatalogResponse", catalog)


def test_error_bodies_validate(square: SandboxProcess, make_square: Callable[..., SandboxProcess]) -> None:
    # Given requests that fail in each way Square fails
    faulty = make_square(rate_429=1.0)
    with client_for(square) as client, client_for(faulty) as faulted:
        responses = [
            client.get("/v2/payments", headers={"Authorization": "Bearer wrong"}),
            client.get("/v2/payments", params={"cursor": "bogus"}),
            client.get("/v2/payments/doesnotexist"),
            client.get("/v2/customers", params={"limit": 0}),
            client.get("/v2/customers", params={"limit": 1000}),
            client.get("/v2/locations", headers={"Square-Version": "2025-8-1"}),
            client.post("/v2/catalog/search", content=b"{not json"),
            faulted.get("/v2/payments"),
        ]
        faulty.admin.set_faults(rate_429=0.0, rate_500=1.0)
        responses.append(faulted.get("/v2/payments"))
        faulty.admin.set_faults(rate_500=0.0, token_revoked=True)
        responses.append(faulted.get("/v2/payments"))

    # Then each is an error status with a strictly valid Square error body
    assert all(400 <= response.status_code < 600 for response in responses)
    assert_valid("ErrorResponse", [response.json() for response in responses])


def test_the_deleted_flag_patch_is_what_squares_own_example_sends() -> None:
    # Given Square's spec as published
    schemas = square_spec()["components"]["schemas"]

    # Then a customer.deleted example carries data.deleted, which the generic EventData schema has
    # and CustomerDeletedEventData lacks: the one property PATCHES adds
    assert schemas["CustomerDeletedEvent"]["example"]["data"]["deleted"] is True
    assert schemas["EventData"]["properties"]["deleted"]["type"] == "boolean"
    assert "deleted" not in schemas["CustomerDeletedEventData"]["properties"]
    assert set(PATCHES) == {"CustomerDeletedEventData"}


def test_changed_records_get_by_id_and_events_validate(make_square: Callable[..., SandboxProcess]) -> None:
    # Given a sandbox whose payments, customers and catalog are changed in every way it offers
    sandbox = make_square()
    admin = sandbox.admin
    truth = admin.truth("payments")
    approved = [p["id"] for p in truth if p["status"] == "APPROVED"][:2]
    completed = next(p["id"] for p in truth if p["status"] == "COMPLETED" and p["refunded_cents"] == 0)
    customers = admin.truth("customers")
    grouped = next(c["id"] for c in customers if c["group_ids"])
    changes = [
        admin.update_payment(approved[0]),
        admin.update_payment(approved[1], status="CANCELED"),
        admin.update_payment(completed, refund_cents=1),
        admin.update_payment(completed),
        admin.create_customer(),
        admin.update_customer(customers[0]["id"]),
        admin.delete_customer(grouped),
        admin.touch_catalog(),
    ]
    advanced = admin.advance(600, new_payments=2, changed_payments=2)

    # When the changed records are fetched by id, and missing ones asked for
    with client_for(sandbox) as client:
        payment_ids = [*approved, completed, *advanced["created"], *advanced["changed"]]
        payments = [client.get(f"/v2/payments/{payment_id}").json() for payment_id in payment_ids]
        live = [c["id"] for c in customers[:5] if c["id"] != grouped]
        fetched = [client.get(f"/v2/customers/{customer_id}").json() for customer_id in live]
        errors = [client.get(f"/v2/customers/{grouped}").json(), client.get("/v2/customers/NOPE").json()]

    # Then every response validates strictly, and so does every event body, by its type's schema
    assert_valid("GetPaymentResponse", payments)
    assert_valid("RetrieveCustomerResponse", fetched)
    assert_valid("ErrorResponse", errors)
    events = [change["event"] for change in changes]
    assert {event["type"] for event in events} == set(EVENT_SCHEMAS) - {"payment.created"}
    for event in events:
        assert_valid(EVENT_SCHEMAS[event["type"]], [event])
    # And the changed payments and customers, as events carry them, validate as resources too
    assert_valid(
        "Payment", [e["data"]["object"]["payment"] for e in events if e["type"].startswith("payment")]
    )
    assert_valid(
        "Customer", [e["data"]["object"]["customer"] for e in events if e["type"].startswith("customer")]
    )


def test_delivered_events_validate(make_square: Callable[..., SandboxProcess]) -> None:
    # Given a sandbox delivering its events to a recording receiver
    receiver = Receiver()
    try:
        sandbox = make_square(webhook_url=receiver.url)

        # When the clock creates and changes payments, and a customer is deleted
        result = sandbox.admin.advance(600, new_payments=3, changed_payments=3)
        sandbox.admin.delete_customer(sandbox.admin.truth("customers")[0]["id"])
        count = len(result["created"]) + len(result["changed"]) + 1
        bodies = [request.json() for request in receiver.wait_for(count)]
    finally:
        receiver.close()

    # Then every body that arrived validates strictly by its type's schema
    assert sorted(body["type"] for body in bodies) == sorted(
        ["payment.created"] * len(result["created"])
        + ["payment.updated"] * len(result["changed"])
        + ["customer.deleted"]
    )
    for body in bodies:
        assert_valid(EVENT_SCHEMAS[body["type"]], [body])


def test_strict_event_validation_rejects_what_square_would_not_send(
    make_square: Callable[..., SandboxProcess],
) -> None:
    # Given real payment.updated and customer.deleted events
    sandbox = make_square()
    approved = next(p["id"] for p in sandbox.admin.truth("payments") if p["status"] == "APPROVED")
    updated = sandbox.admin.update_payment(approved)["event"]
    deleted = sandbox.admin.delete_customer(sandbox.admin.truth("customers")[0]["id"])["event"]

    # When they gain an envelope field their schema lacks, lose their data, or a payment event
    # claims a deletion
    located = {**updated, "location_id": "L1"}
    bare = {key: value for key, value in deleted.items() if key != "data"}
    flagged = {**updated, "data": {**updated["data"], "deleted": True}}

    # Then strict validation rejects each, and accepts the originals
    assert not list(validator("PaymentUpdatedEvent").iter_errors(updated))
    assert not list(validator("CustomerDeletedEvent").iter_errors(deleted))
    assert list(validator("PaymentUpdatedEvent").iter_errors(located))
    assert list(validator("CustomerDeletedEvent").iter_errors(bare))
    assert list(validator("PaymentUpdatedEvent").iter_errors(flagged))
