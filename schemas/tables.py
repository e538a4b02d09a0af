"""Warehouse tables: schema, key, version column, partitioning and clustering, in one place.

The sink creates tables from these definitions and builds every MERGE from them, so a table's
layout is decided here and nowhere else. Layout choices, table by table:

- ``square_payments`` is the big, append-mostly table (100k+ rows, growing daily) that dashboards
  filter by day, customer and status: partitioned by ``DATE(created_at)`` (a payment's creation time
  never changes, so a MERGE may prune the target by the batch's created_at range) and clustered by
  ``customer_id, status``.
- ``square_items`` holds one row per catalog variation (hundreds to a few thousand rows). Catalog
  objects have no ``created_at``, and ``updated_at`` changes on every edit: partitioning by it would
  move rows between partitions and a MERGE pruned by the batch's updated_at range would miss the old
  row and insert a duplicate. The table is far below the size where partitions pay off, so it is not
  partitioned; clustering by ``item_id`` keeps variations of one item together.
- ``square_customers`` (a few thousand rows) is likewise small: not partitioned, clustered by ``id``.
  SearchCustomers never returns a deleted customer, so deletions arrive by webhook
  (``customer.deleted``) and are kept as ``is_deleted``/``deleted_at``, never as a missing row.
- ``lightspeed_transactions`` is Lightspeed's big table (one row per sale, growing daily), read like
  ``square_payments``: partitioned by ``DATE(createTime)``, which never changes (``updatetime`` does,
  so partitioning by it would move rows between partitions and break MERGE pruning), and clustered
  by ``shopID, customerID``, the filters store and customer dashboards use. Column names are
  Lightspeed's own (``saleID``, ``calcTotal``, ...), so queries read like the API documentation.
- ``lightspeed_products`` (one row per item, thousands of rows) is not partitioned for the same
  reason as ``square_items``: ``timeStamp`` is mutable and the table is far below the size where
  partitions pay off. Clustered by ``categoryID, itemID`` for category reports.
- ``notion_pages`` (one row per Notion page an event named) is small and read whole: not
  partitioned, clustered by ``parent_id``. ``last_edited_time`` orders versions, but Notion rounds it
  to the minute, so two edits within a minute share it: an equal time with different content
  replaces the stored row too (``coarse_version``). A trashed page keeps
  its row with ``in_trash``; one Notion no longer serves (404 after ``page.deleted``) is marked
  ``is_deleted`` with ``deleted_at``.
- ``notion_events`` keeps every event received, once per event id (Notion and its retries may
  deliver one event several times): insert-only, partitioned by ``DATE(timestamp)`` (when the change
  happened, which never changes), clustered by ``type``.
- ``_possync_migrations`` records each step of each migration (plan, copy, verify, swap, done) with
  its status and details (estimate, differences), so a crashed or retried migration resumes at the
  step it was on and ``possync migrate status`` can show it. Tiny: not partitioned.
- ``_possync_rejects`` keeps every record that failed validation with its reason; partitioned by
  ``DATE(rejected_at)`` so old rejects are cheap to scan or expire.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict

__all__ = [
    "LIGHTSPEED_PRODUCTS",
    "LIGHTSPEED_TRANSACTIONS",
    "METADATA_COLUMNS",
    "MIGRATIONS",
    "NOTION_EVENTS",
    "NOTION_PAGES",
    "REJECTS",
    "SQUARE_CUSTOMERS",
    "SQUARE_ITEMS",
    "SQUARE_PAYMENTS",
    "TABLES",
    "Column",
    "TableSpec",
    "table_for",
]

ColumnType = Literal["STRING", "INT64", "NUMERIC", "TIMESTAMP", "BOOL", "DATE", "FLOAT64"]
ColumnMode = Literal["NULLABLE", "REQUIRED", "REPEATED"]


class Column(BaseModel):
    """One column of a warehouse table."""

    model_config = ConfigDict(frozen=True)

    name: str
    type: ColumnType
    mode: ColumnMode = "NULLABLE"
    description: str = ""


class TableSpec(BaseModel):
    """A warehouse table and how rows are merged into it.

    Attributes:
        name: table id inside the dataset.
        columns: every column, in order.
        key: columns that identify a row; a MERGE matches on them.
        version_column: the column that orders versions of one row (``updated_at`` or ``version``);
            a MERGE replaces a row only when the incoming version is greater. ``None`` means
            insert-only (a row that exists is never touched).
        deleted_column: a BOOL column marking rows deleted at the source, or ``None``. An incoming
            row with it set replaces a stored row not yet marked, whatever the versions (a
            deletion snapshot may carry the version already stored).
        coarse_version: the version column is too coarse to order every change (Notion rounds
            ``last_edited_time`` to the minute): an incoming row with an equal version but different
            content also replaces the stored one. A replay (same content) still changes nothing.
        partition_field: the TIMESTAMP or DATE column the table is partitioned by, or ``None``.
        partition_granularity: time-unit partitioning granularity.
        clustering: up to four clustering columns.
    """

    model_config = ConfigDict(frozen=True)

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    version_column: str | None
    deleted_column: str | None = None
    coarse_version: bool = False
    partition_field: str | None = None
    partition_granularity: Literal["HOUR", "DAY", "MONTH", "YEAR"] = "DAY"
    clustering: tuple[str, ...] = ()
    description: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        """Column names in order."""
        return tuple(column.name for column in self.columns)

    def column(self, name: str) -> Column:
        """The column called ``name``.

        Raises:
            KeyError: if the table has no such column.
        """
        for column in self.columns:
            if column.name == name:
                return column
        raise KeyError(f"{self.name} has no column {name!r}")


#: Ingestion metadata every synced table carries.
METADATA_COLUMNS = (
    Column(
        name="_synced_at", type="TIMESTAMP", mode="REQUIRED", description="When possync wrote this version"
    ),
    Column(name="_message_id", type="STRING", description="Dramatiq message that wrote this version"),
)

SQUARE_PAYMENTS = TableSpec(
    name="square_payments",
    description="Square payments, one row per payment id, latest version.",
    columns=(
        Column(name="id", type="STRING", mode="REQUIRED"),
        Column(name="created_at", type="TIMESTAMP", mode="REQUIRED"),
        Column(name="updated_at", type="TIMESTAMP", mode="REQUIRED"),
        Column(name="status", type="STRING"),
        Column(name="amount", type="NUMERIC", description="amount_money in major units; excludes the tip"),
        Column(name="tip_amount", type="NUMERIC", description="tip_money in major units, 0 when absent"),
        Column(name="total_amount", type="NUMERIC", description="total_money in major units"),
        Column(name="refunded_amount", type="NUMERIC", description="refunded_money, 0 when absent"),
        Column(name="currency", type="STRING"),
        Column(name="customer_id", type="STRING"),
        Column(name="location_id", type="STRING"),
        Column(name="order_id", type="STRING"),
        Column(name="source_type", type="STRING"),
        Column(name="card_brand", type="STRING"),
        Column(name="receipt_url", type="STRING"),
        *METADATA_COLUMNS,
    ),
    key=("id",),
    version_column="updated_at",
    partition_field="created_at",
    clustering=("customer_id", "status"),
)

SQUARE_ITEMS = TableSpec(
    name="square_items",
    description="Square catalog, one row per item variation; deleted objects kept with is_deleted.",
    columns=(
        Column(name="variation_id", type="STRING", mode="REQUIRED"),
        Column(name="item_id", type="STRING"),
        Column(name="name", type="STRING"),
        Column(name="variation_name", type="STRING"),
        Column(name="category_id", type="STRING"),
        Column(name="sku", type="STRING"),
        Column(name="price", type="NUMERIC", description="NULL for variable pricing"),
        Column(name="currency", type="STRING"),
        Column(name="available", type="BOOL", description="not deleted and present at some location"),
        Column(name="is_deleted", type="BOOL", mode="REQUIRED"),
        Column(name="version", type="INT64", mode="REQUIRED"),
        Column(name="updated_at", type="TIMESTAMP", mode="REQUIRED"),
        *METADATA_COLUMNS,
    ),
    key=("variation_id",),
    version_column="version",
    clustering=("item_id",),
)

SQUARE_CUSTOMERS = TableSpec(
    name="square_customers",
    description="Square customers without personal data (no names, e-mails, phones or addresses).",
    columns=(
        Column(name="id", type="STRING", mode="REQUIRED"),
        Column(name="created_at", type="TIMESTAMP", mode="REQUIRED"),
        Column(name="updated_at", type="TIMESTAMP", mode="REQUIRED"),
        Column(name="version", type="INT64", mode="REQUIRED"),
        Column(name="creation_source", type="STRING"),
        Column(name="reference_id", type="STRING"),
        Column(name="group_ids", type="STRING", mode="REPEATED"),
        Column(name="is_deleted", type="BOOL", description="deleted at Square (customer.deleted webhook)"),
        Column(name="deleted_at", type="TIMESTAMP", description="when Square reported the deletion"),
        *METADATA_COLUMNS,
    ),
    key=("id",),
    version_column="version",
    deleted_column="is_deleted",
    clustering=("id",),
)

LIGHTSPEED_TRANSACTIONS = TableSpec(
    name="lightspeed_transactions",
    description="Lightspeed R-Series sales, one row per saleID, latest version; names as in the API.",
    columns=(
        Column(name="saleID", type="INT64", mode="REQUIRED"),
        Column(name="completed", type="BOOL", mode="REQUIRED"),
        Column(name="calcSubtotal", type="NUMERIC", description="before discounts and taxes"),
        Column(name="calcDiscount", type="NUMERIC"),
        Column(name="calcTax1", type="NUMERIC"),
        Column(name="calcTax2", type="NUMERIC"),
        Column(name="calcTotal", type="NUMERIC", description="subtotal - discount + taxes"),
        Column(name="customerID", type="INT64", description="NULL when the sale has no customer (0)"),
        Column(name="employeeID", type="INT64"),
        Column(name="shopID", type="INT64"),
        Column(name="registerID", type="INT64"),
        Column(name="archived", type="BOOL"),
        Column(name="voided", type="BOOL"),
        Column(name="createTime", type="TIMESTAMP", mode="REQUIRED"),
        Column(name="updatetime", type="TIMESTAMP", mode="REQUIRED"),
        Column(name="completeTime", type="TIMESTAMP"),
        *METADATA_COLUMNS,
    ),
    key=("saleID",),
    version_column="updatetime",
    partition_field="createTime",
    clustering=("shopID", "customerID"),
)

LIGHTSPEED_PRODUCTS = TableSpec(
    name="lightspeed_products",
    description="Lightspeed R-Series items, one row per itemID, latest version; archived ones kept.",
    columns=(
        Column(name="itemID", type="INT64", mode="REQUIRED"),
        Column(name="description", type="STRING"),
        Column(name="defaultCost", type="NUMERIC"),
        Column(name="avgCost", type="NUMERIC", description="deprecated by Lightspeed, kept as sent"),
        Column(name="categoryID", type="INT64"),
        Column(name="manufacturerSku", type="STRING"),
        Column(name="systemSku", type="STRING"),
        Column(name="price", type="NUMERIC", description="the Default ItemPrice, NULL if it has none"),
        Column(name="archived", type="BOOL"),
        Column(name="createTime", type="TIMESTAMP"),
        Column(name="timeStamp", type="TIMESTAMP", mode="REQUIRED"),
        *METADATA_COLUMNS,
    ),
    key=("itemID",),
    version_column="timeStamp",
    clustering=("categoryID", "itemID"),
)

REJECTS = TableSpec(
    name="_possync_rejects",
    description="Source records that failed validation, with the reason; nothing is dropped silently.",
    columns=(
        Column(name="source", type="STRING", mode="REQUIRED"),
        Column(name="stream", type="STRING", mode="REQUIRED"),
        Column(name="record_key", type="STRING"),
        Column(name="reason", type="STRING", mode="REQUIRED"),
        Column(name="raw", type="STRING", description="the record as received, JSON"),
        Column(name="message_id", type="STRING"),
        Column(name="rejected_at", type="TIMESTAMP", mode="REQUIRED"),
    ),
    key=("source", "stream", "record_key", "message_id"),
    version_column=None,
    partition_field="rejected_at",
    clustering=("source", "stream"),
)

NOTION_PAGES = TableSpec(
    name="notion_pages",
    description="Notion pages named by webhook events, latest version fetched from the API.",
    columns=(
        Column(name="id", type="STRING", mode="REQUIRED"),
        Column(name="parent_type", type="STRING", description="database_id, data_source_id, page_id, ..."),
        Column(name="parent_id", type="STRING", description="NULL for a workspace parent"),
        Column(name="title", type="STRING", description="plain text of the title property"),
        Column(name="properties", type="STRING", description="the page's properties, JSON"),
        Column(name="url", type="STRING"),
        Column(name="created_time", type="TIMESTAMP"),
        Column(name="last_edited_time", type="TIMESTAMP", mode="REQUIRED"),
        Column(name="archived", type="BOOL"),
        Column(name="in_trash", type="BOOL"),
        Column(name="is_deleted", type="BOOL", description="no longer served by Notion (404)"),
        Column(name="deleted_at", type="TIMESTAMP", description="when the deletion was seen"),
        *METADATA_COLUMNS,
    ),
    key=("id",),
    version_column="last_edited_time",
    deleted_column="is_deleted",
    coarse_version=True,
    clustering=("parent_id",),
)

NOTION_EVENTS = TableSpec(
    name="notion_events",
    description="Every Notion webhook event received, once per event id.",
    columns=(
        Column(name="event_id", type="STRING", mode="REQUIRED"),
        Column(name="type", type="STRING", mode="REQUIRED"),
        Column(name="entity_id", type="STRING"),
        Column(name="entity_type", type="STRING"),
        Column(name="timestamp", type="TIMESTAMP", mode="REQUIRED", description="when the change happened"),
        Column(name="received_at", type="TIMESTAMP", mode="REQUIRED", description="when possync received it"),
        Column(name="attempt_number", type="INT64"),
        Column(name="raw", type="STRING", description="the event as received, JSON"),
        *METADATA_COLUMNS,
    ),
    key=("event_id",),
    version_column=None,
    partition_field="timestamp",
    clustering=("type",),
)

MIGRATIONS = TableSpec(
    name="_possync_migrations",
    description="possync's table migrations, one row per migration and step.",
    columns=(
        Column(name="migration_id", type="STRING", mode="REQUIRED"),
        Column(name="step", type="STRING", mode="REQUIRED", description="plan, copy, verify, swap, done"),
        Column(name="status", type="STRING", mode="REQUIRED", description="running, done, failed"),
        Column(name="table_name", type="STRING", mode="REQUIRED", description="the table migrated"),
        Column(name="started_at", type="TIMESTAMP"),
        Column(name="finished_at", type="TIMESTAMP"),
        Column(name="updated_at", type="TIMESTAMP", mode="REQUIRED"),
        Column(name="details", type="STRING", description="what the step found or did, JSON"),
        Column(name="request", type="STRING", description="the MigrationRequest, JSON"),
        *METADATA_COLUMNS,
    ),
    key=("migration_id", "step"),
    version_column="updated_at",
    clustering=("migration_id",),
)

#: Every table possync manages, by name.
TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        SQUARE_PAYMENTS,
        SQUARE_ITEMS,
        SQUARE_CUSTOMERS,
        LIGHTSPEED_TRANSACTIONS,
        LIGHTSPEED_PRODUCTS,
        NOTION_PAGES,
        NOTION_EVENTS,
        REJECTS,
        MIGRATIONS,
    )
}

_STREAM_TABLES = {
    ("square", "payments"): SQUARE_PAYMENTS,
    ("square", "items"): SQUARE_ITEMS,
    ("square", "customers"): SQUARE_CUSTOMERS,
    ("lightspeed", "sales"): LIGHTSPEED_TRANSACTIONS,
    ("lightspeed", "items"): LIGHTSPEED_PRODUCTS,
}


def table_for(source: str, stream: str) -> TableSpec:
    """The table a (source, stream) writes to.

    Raises:
        KeyError: for an unknown stream.
    """
    return _STREAM_TABLES[(source, stream)]
