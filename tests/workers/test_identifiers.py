"""BigQuery identifiers from settings and the command line are checked before any request is made.

SQL cannot take identifiers as parameters, so possync pastes project, dataset, table and column
names into its SQL text; each must pass BigQuery's naming rules first. The settings that name them
are ``POSSYNC_BIGQUERY_PROJECT`` and ``POSSYNC_BIGQUERY_DATASET``; the command line names a table and
columns in ``possync migrate partition TABLE --partition-field F --cluster A,B``. Each path is
driven the way a person hits it (``possync report``, ``possync worker``, ``possync migrate``), plus
the sink and the report built in code. BigQuery is a loopback HTTP server that records every request
(``POSSYNC_BIGQUERY_ENDPOINT``), so "refused before any request" is observed, not assumed; a valid
configuration sent the same way does reach it (the control), so its silence means something.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import redis
from dramatiq import Broker, Worker
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from producers.enqueue import enqueue
from schemas.messages import RUN_MIGRATION, MigrationRequest
from schemas.settings import ENV_PREFIX, ConfigError, Settings
from tests.polling import wait_until
from tests.tripwire import Tripwire, serve_tripwire
from workers.actors import register_actors
from workers.broker import build_broker
from workers.migrations import migration_id_for
from workers.queues import DeadLetter, QueueDepth, dead_letters, queue_depth
from workers.report import build_report
from workers.resources import WorkerResources
from workers.semaphore import TableSemaphore
from workers.sinks.bigquery import BigQuerySink
from workers.sinks.bigquery_sql import InvalidIdentifier

_REPO = Path(__file__).resolve().parents[2]
#: How long one ``possync`` command may take, seconds: a refused one exits within a few (it loads the
#: BigQuery client); a worker pool that starts after all never exits, and fails the test then.
COMMAND_SECONDS = 45.0
VALID_PROJECT = "possync-test"
VALID_DATASET = "commerce"

#: Dataset names a person might set by mistake, or on purpose: SQL, quoting, a path, too long.
BAD_DATASETS = [
    pytest.param("commerce; DROP TABLE x", id="sql"),
    pytest.param("comm`erce", id="backtick"),
    pytest.param("commerce.square_payments", id="dotted"),
    pytest.param("com merce", id="space"),
    pytest.param("d" * 1025, id="too-long"),
]
#: Project ids BigQuery refuses: SQL, quoting, spaces, too short, upper case, a dot without a domain.
BAD_PROJECTS = [
    pytest.param("my-project`; DROP TABLE x", id="sql"),
    pytest.param("my project", id="space"),
    pytest.param("ab", id="too-short"),
    pytest.param("My-Project", id="upper-case"),
    pytest.param("my.project", id="dot-without-domain"),
]


@pytest.fixture
def tripwire() -> Iterator[Tripwire]:
    """The recording server, answering 401 in BigQuery's error shape, stopped after the test."""
    with serve_tripwire(b'{"error": {"code": 401, "message": "tripwire", "errors": []}}') as wire:
        yield wire


@pytest.fixture
def possync(redis_url: str, tripwire: Tripwire) -> Callable[..., subprocess.CompletedProcess[str]]:
    """Runs ``possync ARGS`` with BigQuery at the tripwire; keyword arguments are settings."""
    base = {key: value for key, value in os.environ.items() if not key.upper().startswith(ENV_PREFIX)}
    base |= {
        "POSSYNC_REDIS_URL": redis_url,
        "POSSYNC_BIGQUERY_ENDPOINT": tripwire.url,
        "POSSYNC_BIGQUERY_TIMEOUT_SECONDS": "5",
        "POSSYNC_SQUARE_ACCESS_TOKEN": "identifier-test-token",
        "POSSYNC_WORKER_METRICS_PORT": "0",
    }

    def run(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
        env = base | {ENV_PREFIX + name.upper(): value for name, value in settings.items()}
        # Its own session, so that a command that does not exit (a worker pool that started after
        # all) is killed with every process it forked.
        process = subprocess.Popen(
            [sys.executable, "-m", "producers.cli", *args],
            cwd=_REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, stderr = process.communicate(timeout=COMMAND_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(
                f"possync {' '.join(args)} still ran after {COMMAND_SECONDS:g} s:\n{stdout}\n{stderr}"
            ) from None
        return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)

    return run


def _assert_refused_naming(result: subprocess.CompletedProcess[str], variable: str) -> None:
    """Exit status 2 with one line naming the variable: a configuration error, not a crash."""
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert variable in result.stderr, result.stderr
    assert "Traceback" not in result.stderr, result.stderr


# possync report


@pytest.mark.parametrize("dataset", BAD_DATASETS)
def test_report_refuses_a_bad_dataset_before_any_request(
    possync: Callable[..., subprocess.CompletedProcess[str]], tripwire: Tripwire, dataset: str
) -> None:
    # Given POSSYNC_BIGQUERY_DATASET that is not a BigQuery dataset name
    # When a person asks for the report
    result = possync("report", bigquery_project=VALID_PROJECT, bigquery_dataset=dataset)

    # Then it fails at start-up naming the variable, and nothing reached BigQuery
    _assert_refused_naming(result, "POSSYNC_BIGQUERY_DATASET")
    assert tripwire.requests == []


@pytest.mark.parametrize("project", BAD_PROJECTS)
def test_report_refuses_a_bad_project_before_any_request(
    possync: Callable[..., subprocess.CompletedProcess[str]], tripwire: Tripwire, project: str
) -> None:
    # Given POSSYNC_BIGQUERY_PROJECT that is not a Google Cloud project id
    # When a person asks for the report
    result = possync("report", bigquery_project=project, bigquery_dataset=VALID_DATASET)

    # Then it fails at start-up naming the variable, and nothing reached BigQuery
    _assert_refused_naming(result, "POSSYNC_BIGQUERY_PROJECT")
    assert tripwire.requests == []


def test_report_with_valid_names_does_reach_bigquery(
    possync: Callable[..., subprocess.CompletedProcess[str]], tripwire: Tripwire
) -> None:
    # Given valid names (the control: the stand-in BigQuery refuses every request with 401)
    # When the report is asked for
    result = possync("report", bigquery_project=VALID_PROJECT, bigquery_dataset=VALID_DATASET)

    # Then its query did reach BigQuery, so the silence above is the checks' doing
    assert tripwire.requests, (result.returncode, result.stderr)
    assert all(
        request.split(" ", 1)[1].startswith(f"/bigquery/v2/projects/{VALID_PROJECT}/")
        for request in tripwire.requests
    )


# possync worker


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        pytest.param("bigquery_dataset", "commerce; DROP TABLE x", id="dataset-sql"),
        pytest.param("bigquery_dataset", "comm`erce", id="dataset-backtick"),
        pytest.param("bigquery_project", "my-project`x", id="project-backtick"),
        pytest.param("bigquery_project", "ab", id="project-too-short"),
    ],
)
def test_a_worker_pool_refuses_bad_names_at_start_up(
    possync: Callable[..., subprocess.CompletedProcess[str]], tripwire: Tripwire, setting: str, value: str
) -> None:
    # Given a bad dataset or project name, the other valid
    names = {"bigquery_project": VALID_PROJECT, "bigquery_dataset": VALID_DATASET, setting: value}

    # When a person starts a worker pool
    result = possync("worker", "--queues", "square", "--processes", "1", "--threads", "1", **names)

    # Then it does not start (rather than dead-lettering every message later), naming the variable
    _assert_refused_naming(result, ENV_PREFIX + setting.upper())
    assert tripwire.requests == []


# Built in code: the sink, the worker's resources, the report.


def _client(tripwire: Tripwire) -> bigquery.Client:
    return bigquery.Client(
        project=VALID_PROJECT,
        credentials=AnonymousCredentials(),
        client_options=ClientOptions(api_endpoint=tripwire.url),
    )


@pytest.mark.parametrize(
    ("kind", "project", "dataset"),
    [
        pytest.param("dataset", VALID_PROJECT, "commerce; DROP TABLE x", id="dataset-sql"),
        pytest.param("dataset", VALID_PROJECT, "comm`erce", id="dataset-backtick"),
        pytest.param("project", "possync-test`; DROP TABLE x", VALID_DATASET, id="project-sql"),
        pytest.param("project", "ab", VALID_DATASET, id="project-too-short"),
    ],
)
def test_the_sink_and_the_report_refuse_bad_names_before_any_request(
    tripwire: Tripwire, redis_client: redis.Redis, kind: str, project: str, dataset: str
) -> None:
    # Given a BigQuery client whose every request would reach the tripwire
    client = _client(tripwire)

    # When a sink is built on the bad name, then it is refused, naming what is wrong
    with pytest.raises(InvalidIdentifier, match=f"invalid BigQuery {kind} name"):
        BigQuerySink(
            client,
            project=project,
            dataset=dataset,
            location="US",
            semaphore=TableSemaphore(redis_client, permits=1),
        )
    # And when the report is built on it, likewise
    with pytest.raises(InvalidIdentifier, match=f"invalid BigQuery {kind} name"):
        build_report(client, project=project, dataset=dataset, zone=ZoneInfo("UTC"), now=datetime.now(UTC))
    # And nothing reached BigQuery
    assert tripwire.requests == []


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        pytest.param("bigquery_project", "ab", id="project-too-short"),
        pytest.param("bigquery_project", "my.project", id="project-dot-without-domain"),
    ],
)
def test_worker_resources_refuse_a_bad_project_as_a_config_error(
    tripwire: Tripwire, redis_url: str, setting: str, value: str
) -> None:
    # Given settings that load (their own checks pass) but name a project BigQuery refuses
    settings = Settings.model_validate(
        {"redis_url": redis_url, "bigquery_endpoint": tripwire.url, setting: value}
    )

    # When a worker process builds its resources (on its first message)
    # Then it is a configuration error naming the variable, not a retried ValueError per message
    with pytest.raises(ConfigError, match=ENV_PREFIX + setting.upper()):
        WorkerResources.build(settings)
    assert tripwire.requests == []


def test_a_bad_dataset_setting_never_loads() -> None:
    # When settings are built with a dataset that is not a BigQuery name
    # Then they are refused at once, naming the rule (load_settings names the variable)
    for name in ("commerce; DROP TABLE x", "comm`erce", "a.b", "x" * 1025):
        with pytest.raises(ValueError, match="letters, digits and underscores"):
            Settings(bigquery_dataset=name)


# possync migrate


def test_migrate_refuses_an_unknown_table_and_enqueues_nothing(
    possync: Callable[..., subprocess.CompletedProcess[str]], tripwire: Tripwire, redis_client: redis.Redis
) -> None:
    # When a person asks to migrate a table with a backtick in its name
    result = possync("migrate", "partition", "x`y", bigquery_project=VALID_PROJECT)

    # Then it is refused at once, naming the tables possync manages; nothing is enqueued or asked
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "unknown table 'x`y'" in result.stderr
    assert "square_payments" in result.stderr
    assert queue_depth(redis_client, "migrations") == QueueDepth(ready=0, delayed=0, in_flight=0, dead=0)
    assert tripwire.requests == []


@pytest.fixture
def migrations_worker(redis_url: str, tripwire: Tripwire) -> Iterator[Broker]:
    """A real worker with the real actors on the migrations queue, BigQuery at the tripwire; yields
    its broker."""
    settings = Settings(
        redis_url=redis_url,
        bigquery_project=VALID_PROJECT,
        bigquery_endpoint=tripwire.url,
        bigquery_timeout_seconds=5,
        min_backoff_seconds=0.05,
        max_backoff_seconds=0.2,
    )
    broker = build_broker(settings)
    register_actors(broker, settings)
    worker = Worker(broker, queues={"migrations"}, worker_threads=1, worker_timeout=100)
    worker.start()
    yield broker
    worker.stop()
    broker.close()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        pytest.param("--partition-field", "created_at`; DROP TABLE x; --", id="partition-field"),
        pytest.param("--cluster", "customer_id,sta`tus", id="cluster-column"),
    ],
)
def test_a_migration_naming_a_bad_column_is_refused_by_the_command_and_by_the_worker(
    possync: Callable[..., subprocess.CompletedProcess[str]],
    migrations_worker: Broker,
    tripwire: Tripwire,
    redis_client: redis.Redis,
    option: str,
    value: str,
) -> None:
    # Given a migrations worker, and a person naming a column with a backtick
    # When the migration is asked for
    result = possync("migrate", "partition", "square_payments", option, value, bigquery_project=VALID_PROJECT)

    # Then the command refuses it, naming the column, and enqueues nothing
    assert result.returncode == 2, result.stderr
    assert "invalid BigQuery column name" in result.stderr
    assert queue_depth(redis_client, "migrations") == QueueDepth(ready=0, delayed=0, in_flight=0, dead=0)

    # When the same request reaches the queue anyway (sent by hand, or by an older producer)
    field = value if option == "--partition-field" else "created_at"
    cluster = tuple(value.split(",")) if option == "--cluster" else ()
    request = MigrationRequest(
        request_id="migrate-by-hand",
        migration_id=migration_id_for("square_payments", field, "DAY", cluster),
        table="square_payments",
        partition_field=field,
        cluster=cluster,
    )
    enqueue(migrations_worker, RUN_MIGRATION, request)

    # Then the worker refuses it for good, naming the column, before any request to BigQuery
    def dead() -> list[DeadLetter]:
        return dead_letters(redis_client, ["migrations"])

    [letter] = wait_until(dead, timeout_seconds=30, message="the migration was never dead-lettered")
    assert letter.error_type == "InvalidMigration", letter
    assert letter.retries == 0, letter
    assert "invalid BigQuery column name" in (letter.error or ""), letter
    assert tripwire.requests == []
