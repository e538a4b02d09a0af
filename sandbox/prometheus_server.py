"""Run a real Prometheus server on loopback for the tests, and read it back through its HTTP API.

``PrometheusServer.start([ScrapeJob("possync-workers", ("127.0.0.1:9191",), labels={"pool": "square"})])``
writes a config scraping those jobs every second, starts the ``prometheus`` binary on PATH (Debian's
``apt-get install prometheus``; no other source is tried, and a missing binary is an error that
says so) on a free loopback port with a fresh TSDB directory, and waits until ``/-/ready`` answers.
:class:`PrometheusClient` is a small typed client for ``/api/v1/query`` and ``/api/v1/targets``.

The process dies with its parent like every :class:`~sandbox.local_service.LocalService`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import tempfile
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from sandbox.local_service import LocalService, free_port, log_tail

__all__ = [
    "PrometheusClient",
    "PrometheusError",
    "PrometheusServer",
    "PrometheusServerError",
    "Sample",
    "ScrapeJob",
    "Target",
    "find_prometheus",
]

#: How long the server may take to answer ``/-/ready`` after start, seconds.
STARTUP_TIMEOUT_SECONDS = 60.0
#: Attempts when another process takes the free port between our probe and the server's bind.
_PORT_ATTEMPTS = 3
#: Pause between polls of the HTTP API while waiting, seconds (polling, not synchronisation).
_POLL_SECONDS = 0.2


class PrometheusServerError(RuntimeError):
    """No ``prometheus`` binary, or the server did not come up; the message says what to do."""


class PrometheusError(RuntimeError):
    """The HTTP API answered an error (a bad query, say), or a wait passed its deadline."""


def find_prometheus() -> str:
    """Path of the ``prometheus`` binary on PATH.

    Raises:
        PrometheusServerError: if there is none, saying how to get it.
    """
    found = shutil.which("prometheus")
    if found is None:
        raise PrometheusServerError(
            "no `prometheus` binary on PATH: install the Prometheus server"
            " (`apt-get install prometheus` on Debian/Ubuntu; version 2.x)"
        )
    return found


@dataclass(frozen=True)
class ScrapeJob:
    """One ``scrape_configs`` entry with static targets.

    Attributes:
        name: the job name (the ``job`` label of its series).
        targets: ``host:port`` of each endpoint.
        metrics_path: the path scraped on each target.
        labels: extra labels put on every series of the job's targets.
    """

    name: str
    targets: tuple[str, ...]
    metrics_path: str = "/metrics"
    labels: Mapping[str, str] = field(default_factory=dict)

    def config(self) -> dict[str, Any]:
        """The job as Prometheus configuration (JSON, which is YAML too)."""
        return {
            "job_name": self.name,
            "metrics_path": self.metrics_path,
            "static_configs": [{"targets": list(self.targets), "labels": dict(self.labels)}],
        }


@dataclass(frozen=True)
class Sample:
    """One series of an instant query's result.

    Attributes:
        labels: the series' labels (``__name__`` included unless the query dropped it).
        timestamp: Unix seconds: the evaluation time from :meth:`PrometheusClient.query`, the
            scrape's time from :meth:`PrometheusClient.scraped`.
        value: the value.
    """

    labels: dict[str, str]
    timestamp: float
    value: float


@dataclass(frozen=True)
class Target:
    """One scrape target as ``/api/v1/targets`` reports it.

    Attributes:
        job: its job name.
        scrape_url: the URL scraped.
        health: ``up``, ``down`` or ``unknown`` (not scraped yet).
        last_error: the last scrape's error, ``""`` if it succeeded.
        last_scrape: when the last scrape started, Unix seconds (``None`` before the first).
        labels: the target's labels (``job``, ``instance`` and the job's extra labels).
    """

    job: str
    scrape_url: str
    health: str
    last_error: str
    last_scrape: float | None
    labels: dict[str, str]


_RFC3339 = re.compile(
    r"(?P<base>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(?P<fraction>\d+))?(?P<zone>Z|[+-]\d\d:\d\d)"
)


def _unix(text: str) -> float | None:
    """Prometheus's RFC 3339 time (up to nanoseconds) as Unix seconds; ``None`` for Go's zero time."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise PrometheusError(f"not an RFC 3339 time: {text!r}")
    if match["base"].startswith("0001-"):
        return None
    zone = "+00:00" if match["zone"] == "Z" else match["zone"]
    seconds = datetime.fromisoformat(match["base"] + zone).timestamp()
    return seconds + (float("0." + match["fraction"]) if match["fraction"] else 0.0)


class PrometheusClient:
    """The HTTP API of one Prometheus server.

    Args:
        base_url: e.g. ``http://127.0.0.1:9090``.
        timeout_seconds: deadline of each request, seconds.
    """

    def __init__(self, base_url: str, *, timeout_seconds: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._timeout = timeout_seconds

    def _get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        response = httpx.get(f"{self.base_url}{path}", params=params, timeout=self._timeout)
        try:
            body = response.json()
        except ValueError as exc:
            raise PrometheusError(f"GET {path}: HTTP {response.status_code}, not JSON") from exc
        if body.get("status") != "success":
            raise PrometheusError(
                f"GET {path} {dict(params or {})}: {body.get('errorType')}: {body.get('error')}"
            )
        return body["data"]

    def query(self, promql: str, *, at: float | None = None) -> list[Sample]:
        """Evaluate an instant query (``/api/v1/query``).

        Args:
            promql: the expression; its result must be an instant vector or a scalar.
            at: evaluation time, Unix seconds (default: now).

        Returns:
            The result's series (a scalar is one sample without labels).

        Raises:
            PrometheusError: the server refused the query, or it returned a matrix or a string.
        """
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        kind = data["resultType"]
        if kind == "scalar":
            timestamp, value = data["result"]
            return [Sample({}, float(timestamp), float(value))]
        if kind != "vector":
            raise PrometheusError(f"{promql!r} gave a {kind}, not an instant vector")
        return [
            Sample(dict(item["metric"]), float(item["value"][0]), float(item["value"][1]))
            for item in data["result"]
        ]

    def scraped(self, selector: str, *, at: float | None = None) -> list[Sample]:
        """The latest scraped sample of each series ``selector`` matches, with its scrape time.

        An instant query stamps its results with the evaluation time; this one asks for the raw
        samples of the last five minutes (``SELECTOR[5m]``, Prometheus's lookback) in one query and
        keeps each series' last, so each value comes with the time it was scraped.

        Args:
            selector: a series selector, e.g. ``possync_queue_messages{queue="square"}``.
            at: evaluation time, Unix seconds (default: now).

        Raises:
            PrometheusError: the server refused the selector.
        """
        params = {"query": f"{selector}[5m]"}
        if at is not None:
            params["time"] = f"{at:.3f}"
        data = self._get("/api/v1/query", params)
        if data["resultType"] != "matrix":
            raise PrometheusError(f"{selector!r} is not a series selector")
        samples = []
        for item in data["result"]:
            timestamp, value = item["values"][-1]
            samples.append(Sample(dict(item["metric"]), float(timestamp), float(value)))
        return samples

    def targets(self) -> list[Target]:
        """The active scrape targets (``/api/v1/targets?state=active``)."""
        data = self._get("/api/v1/targets", {"state": "active"})
        return [
            Target(
                job=str(item["scrapePool"]),
                scrape_url=str(item["scrapeUrl"]),
                health=str(item["health"]),
                last_error=str(item.get("lastError", "")),
                last_scrape=_unix(str(item.get("lastScrape", "0001-01-01T00:00:00Z"))),
                labels=dict(item.get("labels", {})),
            )
            for item in data["activeTargets"]
        ]

    def wait_for_targets_up(
        self, jobs: Collection[str], *, timeout_seconds: float, scraped_after: float | None = None
    ) -> list[Target]:
        """Wait until every target of ``jobs`` is up (and, if asked, scraped since a moment).

        Args:
            jobs: job names; each must have at least one target, and all of them up.
            timeout_seconds: deadline, seconds.
            scraped_after: if given, each target's last scrape must also have started after this
                Unix time.

        Returns:
            Those jobs' targets.

        Raises:
            PrometheusError: at the deadline, naming each target's health and last error.
        """
        deadline = time.monotonic() + timeout_seconds
        while True:
            targets = [target for target in self.targets() if target.job in jobs]
            seen = {target.job for target in targets}
            fresh = all(
                target.last_scrape is not None and target.last_scrape > scraped_after
                for target in targets
                if scraped_after is not None
            )
            if seen == set(jobs) and all(target.health == "up" for target in targets) and fresh:
                return targets
            if time.monotonic() >= deadline:
                shown = "; ".join(
                    f"{target.job} {target.scrape_url}: {target.health} {target.last_error!r}"
                    for target in targets
                )
                raise PrometheusError(
                    f"targets of {sorted(jobs)} not all up within {timeout_seconds:g} s"
                    f" (missing jobs {sorted(set(jobs) - seen)}; {shown or 'no targets'})"
                )
            time.sleep(_POLL_SECONDS)


class PrometheusServer(LocalService):
    """A ``prometheus`` child process on 127.0.0.1; use :meth:`start` (also a context manager).

    Attributes:
        port: the port its web UI and API listen on.
        url: ``http://127.0.0.1:PORT``.
        data_dir: the config file, the TSDB and the log.
        client: a :class:`PrometheusClient` for it.
    """

    error = PrometheusServerError
    label = "prometheus"

    def __init__(self, *, port: int, binary: str, data_dir: Path, owns_data_dir: bool) -> None:
        super().__init__(
            log_path=data_dir / "prometheus.log", scratch_dir=data_dir if owns_data_dir else None
        )
        self.port = port
        self.binary = binary
        self.data_dir = data_dir
        self.client = PrometheusClient(self.url)

    @classmethod
    def start(
        cls,
        jobs: Sequence[ScrapeJob],
        *,
        scrape_interval_seconds: float = 1.0,
        data_dir: Path | None = None,
    ) -> PrometheusServer:
        """Write the config, start the server and wait until ``/-/ready`` answers 200.

        Args:
            jobs: what to scrape.
            scrape_interval_seconds: how often each target is scraped (and its scrape's timeout).
            data_dir: where the config, TSDB (``tsdb/``, emptied first) and log go; a fresh
                temporary directory (removed by :meth:`close`) when ``None``.

        Raises:
            PrometheusServerError: no binary (says how to install one), or the server exited or was
                not ready within :data:`STARTUP_TIMEOUT_SECONDS` (the message carries the log's tail).
        """
        binary = find_prometheus()
        owns = data_dir is None
        directory = Path(tempfile.mkdtemp(prefix="possync-prometheus-")) if data_dir is None else data_dir
        directory.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(directory / "tsdb", ignore_errors=True)
        interval = f"{round(scrape_interval_seconds * 1000)}ms"
        config = {
            "global": {"scrape_interval": interval, "scrape_timeout": interval},
            "scrape_configs": [job.config() for job in jobs],
        }
        (directory / "prometheus.yml").write_text(json.dumps(config, indent=2))
        error: PrometheusServerError | None = None
        for _ in range(_PORT_ATTEMPTS):
            # A fresh log per attempt, so a failure's message quotes only its own attempt.
            (directory / "prometheus.log").unlink(missing_ok=True)
            server = cls(port=free_port(), binary=binary, data_dir=directory, owns_data_dir=owns)
            try:
                server._launch()
            except PrometheusServerError as exc:
                error = exc
                if "address already in use" in str(exc).lower():
                    continue
                if owns:
                    shutil.rmtree(directory, ignore_errors=True)
                raise
            return server
        assert error is not None
        raise error

    @property
    def url(self) -> str:
        """The server's base URL."""
        return f"http://127.0.0.1:{self.port}"

    def _command(self) -> Sequence[str]:
        return [
            self.binary,
            f"--config.file={self.data_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.data_dir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_SECONDS
        while True:
            self._check_alive()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/-/ready", timeout=1.0).status_code == 200:
                    return
            if time.monotonic() >= deadline:
                self.kill()
                raise PrometheusServerError(
                    f"prometheus did not answer /-/ready on port {self.port} within "
                    f"{STARTUP_TIMEOUT_SECONDS:g} s; log:\n{log_tail(self.log_path)}"
                )
            time.sleep(_POLL_SECONDS)
