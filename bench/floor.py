"""The floor of a backfill: the least work that moves the sandbox's payments into the warehouse.

``python -m bench.floor --base-url URL --token T --since ISO --until ISO --project P --dataset D
--endpoint http://127.0.0.1:PORT`` runs in one thread with one ``httpx.Client``: ListLocations, then
ListPayments of each location over the whole ``[since, until)`` (100 per page, oldest first, until
the cursor runs out), each payment converted to its ``square_payments`` row; then the dataset and
the partitioned, clustered target table are created, every row goes into one staging table by one
load job (NDJSON), and one MERGE moves them into the target.

No Redis, no queue, no windows, no retries, no per-batch job-id bookkeeping: what is left is what
any loader of these payments must do. To make the warehouse do exactly the work it does for the
workers, the floor reuses two pure pieces of possync: the row conversion (``schemas/square.py``) and
the MERGE text (``workers/sinks/bigquery_sql.build_merge``). ``bench/backfill.py`` runs this in a
subprocess; each step is timed here (imports and interpreter start excluded) and the result is
printed as one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import resource
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import httpx
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from schemas.square import SquarePayment, payment_row
from schemas.tables import SQUARE_PAYMENTS, TableSpec
from workers.sinks.bigquery_sql import build_merge

__all__ = ["build_parser", "fetch_rows", "load_and_merge", "main"]

#: ListPayments' maximum page size, as the workers ask for.
PAGE_LIMIT = 100
#: The Square-Version header, possync's default.
SQUARE_VERSION = "2025-08-20"
#: Deadline for each HTTP request and BigQuery call, seconds.
TIMEOUT_SECONDS = 300.0


def _pages(http: httpx.Client, location_id: str, since: str, until: str) -> Iterator[list[dict[str, Any]]]:
    """Every page of one location's payments, following Square's cursor to the end."""
    params: dict[str, str | int] = {
        "location_id": location_id,
        "begin_time": since,
        "end_time": until,
        "sort_field": "CREATED_AT",
        "sort_order": "ASC",
        "limit": PAGE_LIMIT,
    }
    while True:
        response = http.get("/v2/payments", params=params)
        response.raise_for_status()
        body = response.json()
        payments = body.get("payments") or []
        if payments:
            yield payments
        cursor = body.get("cursor")
        if not cursor:
            return
        params["cursor"] = cursor


def fetch_rows(
    http: httpx.Client, *, since: str, until: str, synced_at: datetime
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Fetch every location's payments in ``[since, until)`` and convert them to rows.

    Args:
        http: a client whose ``base_url`` is the Square API root and which sends the token.
        since: RFC 3339 lower bound on ``created_at``.
        until: RFC 3339 upper bound on ``created_at`` (exclusive).
        synced_at: the ``_synced_at`` stamped on each row.

    Returns:
        The JSON-ready rows, and ``{"pages", "fetch_seconds", "convert_seconds"}``.
    """
    rows: list[dict[str, Any]] = []
    pages = 0
    convert_seconds = 0.0
    started = time.perf_counter()
    response = http.get("/v2/locations")
    response.raise_for_status()
    for location in response.json()["locations"]:
        for page in _pages(http, str(location["id"]), since, until):
            pages += 1
            converting = time.perf_counter()
            for raw in page:
                payment = SquarePayment.model_validate(raw)
                row = payment_row(payment, synced_at=synced_at, message_id=None)
                rows.append(row.model_dump(mode="json", by_alias=True))
            convert_seconds += time.perf_counter() - converting
    total = time.perf_counter() - started
    return rows, {
        "pages": pages,
        "fetch_seconds": total - convert_seconds,
        "convert_seconds": convert_seconds,
    }


def _schema(spec: TableSpec) -> list[bigquery.SchemaField]:
    return [bigquery.SchemaField(column.name, column.type, mode=column.mode) for column in spec.columns]


def load_and_merge(
    client: bigquery.Client, rows: list[dict[str, Any]], *, project: str, dataset: str, location: str
) -> dict[str, float]:
    """Create the dataset and target table, load every row into one staging table, MERGE once.

    Returns:
        ``{"create_seconds", "load_seconds", "merge_seconds"}``.
    """
    spec = SQUARE_PAYMENTS
    started = time.perf_counter()
    created = bigquery.Dataset(f"{project}.{dataset}")
    created.location = location
    client.create_dataset(created, exists_ok=True, timeout=TIMEOUT_SECONDS)
    target = bigquery.Table(f"{project}.{dataset}.{spec.name}", schema=_schema(spec))
    if spec.partition_field is not None:
        target.time_partitioning = bigquery.TimePartitioning(
            type_=spec.partition_granularity, field=spec.partition_field
        )
    target.clustering_fields = list(spec.clustering) or None
    client.create_table(target, exists_ok=True, timeout=TIMEOUT_SECONDS)
    staging = f"{spec.name}_floor_{uuid.uuid4().hex[:12]}"
    client.create_table(
        bigquery.Table(f"{project}.{dataset}.{staging}", schema=_schema(spec)), timeout=TIMEOUT_SECONDS
    )
    loading = time.perf_counter()
    payload = "".join(json.dumps(row, separators=(",", ":")) + "\n" for row in rows).encode()
    config = bigquery.LoadJobConfig(
        source_format=bigquery.SourceFormat.NEWLINE_DELIMITED_JSON,
        schema=_schema(spec),
        write_disposition=bigquery.WriteDisposition.WRITE_TRUNCATE,
    )
    client.load_table_from_file(
        io.BytesIO(payload), f"{project}.{dataset}.{staging}", job_config=config, size=len(payload)
    ).result(timeout=TIMEOUT_SECONDS)
    merging = time.perf_counter()
    statement = build_merge(spec, project=project, dataset=dataset, staging_table=staging, rows=rows)
    parameters = [
        bigquery.ScalarQueryParameter(name, kind, value) for name, kind, value in statement.parameters
    ]
    client.query(statement.sql, job_config=bigquery.QueryJobConfig(query_parameters=parameters)).result(
        timeout=TIMEOUT_SECONDS
    )
    done = time.perf_counter()
    return {
        "create_seconds": loading - started,
        "load_seconds": merging - loading,
        "merge_seconds": done - merging,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.floor``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.floor",
        description="The least work that backfills the Square sandbox's payments into the emulator: "
        "one HTTP client, one load job, one MERGE. Prints the step timings as JSON.",
    )
    parser.add_argument("--base-url", required=True, help="Square API root (the sandbox), without /v2")
    parser.add_argument("--token", required=True, help="bearer token the sandbox accepts")
    parser.add_argument("--since", required=True, help="RFC 3339 start of created_at (inclusive)")
    parser.add_argument("--until", required=True, help="RFC 3339 end of created_at (exclusive)")
    parser.add_argument("--project", required=True, help="BigQuery project id")
    parser.add_argument("--dataset", required=True, help="dataset to create and load into")
    parser.add_argument("--endpoint", required=True, help="the emulator's REST root, http://127.0.0.1:PORT")
    parser.add_argument("--location", default="US", help="dataset location (default: US)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the floor once and print its timings as JSON on stdout."""
    args = build_parser().parse_args(argv)
    client = bigquery.Client(
        project=args.project,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=args.endpoint),
        location=args.location,
    )
    headers = {"Authorization": f"Bearer {args.token}", "Square-Version": SQUARE_VERSION}
    started = time.perf_counter()
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=TIMEOUT_SECONDS) as http:
        rows, fetched = fetch_rows(http, since=args.since, until=args.until, synced_at=datetime.now(UTC))
    written = load_and_merge(client, rows, project=args.project, dataset=args.dataset, location=args.location)
    seconds = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    result = {
        **fetched,
        **written,
        "seconds": seconds,
        "rows": len(rows),
        # ru_maxrss is in KiB on Linux.
        "peak_rss_bytes": int(usage.ru_maxrss) * 1024,
        "process_cpu_seconds": usage.ru_utime + usage.ru_stime,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
