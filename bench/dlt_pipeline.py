"""The dlt comparison: dlt's ``rest_api`` source pages the Square sandbox's payments into BigQuery.

``python -m bench.dlt_pipeline --base-url URL --token T --since ISO --until ISO --project P
--dataset D --endpoint http://127.0.0.1:PORT`` reads ListPayments of every location (locations
resolved from ListLocations, Square's cursor pagination, 100 per page, oldest first: the pages
``bench/floor.py`` and the workers read) and loads them with ``write_disposition="merge"`` on
``id``, dlt's own way: a load job into a staging dataset, then a MERGE into the target.

dlt's BigQuery destination builds its ``bigquery.Client`` without ``client_options``, but
google-cloud-bigquery takes its API root from ``BIGQUERY_EMULATOR_HOST`` when set, so setting it
(with anonymous credentials handed to dlt as native credentials) points dlt at the same local
emulator as possync. ``--no-load`` stops after extract and normalize instead.

Each step is timed on its own (``extract``, ``normalize``, ``load``, imports excluded) and the
result is printed as one JSON object on stdout; ``bench/backfill.py`` runs this script in a
subprocess. It needs ``dlt`` (``pip install "dlt>=1.31"``); nothing from possync is imported, so
it runs in any environment that has dlt and google-cloud-bigquery.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["build_parser", "main", "payments_source", "run_pipeline"]

#: Square's page size for ListPayments (its maximum), as the workers and the floor ask for.
PAGE_LIMIT = 100
#: The Square-Version header sent, as possync's default.
SQUARE_VERSION = "2025-08-20"
#: dlt's pipeline name (its state lives in a temporary pipelines directory, fresh per run).
PIPELINE_NAME = "possync_bench_square"


def payments_source(*, base_url: str, token: str, since: str, until: str) -> Any:
    """dlt's ``rest_api`` source for every location's payments created in ``[since, until)``.

    Args:
        base_url: the Square API root, without ``/v2``.
        token: the bearer token.
        since: RFC 3339 lower bound on ``created_at`` (inclusive).
        until: RFC 3339 upper bound on ``created_at`` (exclusive).

    Returns:
        A ``DltSource`` with one loaded resource, ``payments`` (merged on ``id``).
    """
    from dlt.sources.rest_api import rest_api_source

    return rest_api_source(
        {
            "client": {
                "base_url": base_url.rstrip("/") + "/",
                "auth": {"type": "bearer", "token": token},
                "headers": {"Square-Version": SQUARE_VERSION},
            },
            "resources": [
                {
                    "name": "locations",
                    "selected": False,
                    "endpoint": {
                        "path": "v2/locations",
                        "data_selector": "locations",
                        "paginator": "single_page",
                    },
                },
                {
                    "name": "payments",
                    "write_disposition": "merge",
                    "primary_key": "id",
                    "endpoint": {
                        "path": "v2/payments",
                        "data_selector": "payments",
                        "params": {
                            "location_id": "{resources.locations.id}",
                            "begin_time": since,
                            "end_time": until,
                            "sort_field": "CREATED_AT",
                            "sort_order": "ASC",
                            "limit": PAGE_LIMIT,
                        },
                        "paginator": {"type": "cursor", "cursor_path": "cursor", "cursor_param": "cursor"},
                    },
                },
            ],
        }
    )


def _emulator_destination(*, project: str, endpoint: str, location: str) -> Any:
    """dlt's BigQuery destination aimed at a local emulator (anonymous credentials)."""
    import dlt
    from dlt.common.configuration.specs import GcpServiceAccountCredentials
    from dlt.common.configuration.specs.gcp_credentials import GcpDefaultCredentials
    from google.auth.credentials import AnonymousCredentials

    # google-cloud-bigquery reads its API root from this variable; dlt offers no client_options.
    os.environ["BIGQUERY_EMULATOR_HOST"] = endpoint
    credentials = GcpServiceAccountCredentials()
    # Google credentials taken as they are (dlt's path for Application Default Credentials): the
    # service-account half of the subclass would refuse anything but a service account.
    GcpDefaultCredentials.parse_native_representation(credentials, AnonymousCredentials())
    credentials.project_id = project
    return dlt.destinations.bigquery(credentials=credentials, location=location)


def _peak_rss_bytes() -> int:
    """This process's peak resident set size, bytes (Linux reports ``ru_maxrss`` in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _cpu_seconds() -> float:
    """User plus system CPU time of this process so far, seconds."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_pipeline(args: argparse.Namespace) -> dict[str, Any]:
    """Extract, normalize and (unless ``--no-load``) load; time each step.

    Returns:
        ``{"extract_seconds", "normalize_seconds", "load_seconds", "seconds", "rows",
        "peak_rss_bytes", "loaded", "destination"}``.
    """
    import dlt

    # The emulator cannot read gzip-compressed load files, dlt's default; uncompressed files only
    # spare dlt the compression.
    os.environ["NORMALIZE__DATA_WRITER__DISABLE_COMPRESSION"] = "true"
    destination = None
    if not args.no_load:
        destination = _emulator_destination(
            project=args.project, endpoint=args.endpoint, location=args.location
        )
    with tempfile.TemporaryDirectory(prefix="possync-dlt-") as pipelines_dir:
        pipeline = dlt.pipeline(
            pipeline_name=PIPELINE_NAME,
            pipelines_dir=pipelines_dir,
            destination=destination,
            dataset_name=args.dataset,
        )
        source = payments_source(base_url=args.base_url, token=args.token, since=args.since, until=args.until)
        started = time.perf_counter()
        pipeline.extract(source)
        extracted = time.perf_counter()
        normalize_info = pipeline.normalize()
        normalized = time.perf_counter()
        loaded = normalized
        if not args.no_load:
            pipeline.load()
            loaded = time.perf_counter()
        rows = normalize_info.row_counts.get("payments", 0) if normalize_info.row_counts else 0
    return {
        "extract_seconds": extracted - started,
        "normalize_seconds": normalized - extracted,
        "load_seconds": loaded - normalized,
        "seconds": loaded - started,
        "rows": rows,
        "peak_rss_bytes": _peak_rss_bytes(),
        "process_cpu_seconds": _cpu_seconds(),
        "loaded": not args.no_load,
        "destination": None if args.no_load else f"bigquery at {args.endpoint}",
        "dlt_version": dlt.__version__,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m bench.dlt_pipeline``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.dlt_pipeline",
        description="Page the Square sandbox's payments with dlt's rest_api source into the BigQuery "
        "emulator (merge on id); print the step timings as JSON.",
    )
    parser.add_argument("--base-url", required=True, help="Square API root (the sandbox), without /v2")
    parser.add_argument("--token", required=True, help="bearer token the sandbox accepts")
    parser.add_argument("--since", required=True, help="RFC 3339 start of created_at (inclusive)")
    parser.add_argument("--until", required=True, help="RFC 3339 end of created_at (exclusive)")
    parser.add_argument("--project", default="possync-bench", help="BigQuery project id")
    parser.add_argument("--dataset", default="dlt_bench", help="dataset dlt loads into (created)")
    parser.add_argument("--endpoint", help="the emulator's REST root, http://127.0.0.1:PORT")
    parser.add_argument("--location", default="US", help="dataset location (default: US)")
    parser.add_argument("--no-load", action="store_true", help="extract and normalize only")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the pipeline once and print its timings as JSON on stdout."""
    args = build_parser().parse_args(argv)
    if not args.no_load and not args.endpoint:
        print("--endpoint is required unless --no-load", file=sys.stderr)
        return 2
    print(json.dumps(run_pipeline(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
