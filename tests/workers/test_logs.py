"""Logs: JSON lines, message context bound per message, stdlib loggers through the same renderer."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import dramatiq
import pytest
import structlog
from dramatiq import Worker

from tests.polling import wait_until
from tests.workers.conftest import TEST_QUEUE
from workers.broker import PossyncRedisBroker
from workers.logs import configure_logging


@pytest.fixture
def captured() -> Iterator[Callable[[str], io.StringIO]]:
    """Configure logging into a buffer (json or console); restore the root logger afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def configure(fmt: str) -> io.StringIO:
        stream = io.StringIO()
        configure_logging(level="INFO", fmt=fmt, stream=stream)  # type: ignore[arg-type]
        return stream

    yield configure
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def _lines(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_each_message_logs_json_with_its_context_and_stdlib_logs_share_the_renderer(
    broker: PossyncRedisBroker, run_worker: Callable[..., Worker], captured: Callable[[str], io.StringIO]
) -> None:
    # Given JSON logging and an actor that logs through structlog and through a stdlib logger
    stream = captured("json")

    @dramatiq.actor(broker=broker, queue_name=TEST_QUEUE, actor_name="logging_actor")
    def logging_actor(payload: dict[str, Any]) -> None:
        structlog.get_logger("possync.test").info("page_read", rows=3)
        logging.getLogger("dramatiq.test").warning("stdlib says %s", "hello")

    # When a sync message of square payments runs
    message = logging_actor.send_with_options(
        kwargs={"payload": {"request_id": "req-logs", "source": "square", "stream": "payments"}}
    )
    run_worker()
    done = wait_until(
        lambda: [line for line in _lines(stream) if line["event"] == "message_done"],
        timeout_seconds=30,
        message="the message never logged its summary",
    )

    # Then every line of the message is one JSON object carrying its context
    expected = {
        "message_id": message.message_id,
        "actor": "logging_actor",
        "queue": TEST_QUEUE,
        "source": "square",
        "stream": "payments",
    }
    lines = _lines(stream)
    page = next(line for line in lines if line["event"] == "page_read")
    stdlib = next(line for line in lines if line["event"] == "stdlib says hello")
    for line in (page, stdlib, done[0]):
        assert {key: line.get(key) for key in expected} == expected
        assert line["timestamp"].endswith("Z")
    assert stdlib["level"] == "warning"
    assert stdlib["logger"] == "dramatiq.test"
    assert page["rows"] == 3
    # And the context does not leak to lines outside the message
    structlog.get_logger("possync.test").info("after")
    assert "message_id" not in _lines(stream)[-1]


def test_console_rendering_is_chosen_by_setting(captured: Callable[[str], io.StringIO]) -> None:
    # Given console rendering
    stream = captured("console")

    # When structlog and a stdlib logger log
    structlog.get_logger("possync.test").info("batch_written", rows=7)
    logging.getLogger("httpx").warning("slow answer")

    # Then the lines are for people, not JSON
    text = stream.getvalue()
    assert "batch_written" in text
    assert "rows=7" in text
    assert "slow answer" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
