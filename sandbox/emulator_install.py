"""Build and cache the local BigQuery emulator's environment (local-bigquery 0.4.0, offline DuckDB).

The recipe is docs/BIGQUERY_EMULATOR.md's, and each step is there for a reason:

- local-bigquery needs Python 3.13+, while possync runs on 3.11+: it gets its own virtual
  environment, built with a Python 3.13 found by :func:`find_python313` (an explicit path the caller
  passes, typically from ``POSSYNC_EMULATOR_PYTHON``; then ``python3.13`` on PATH; then pyenv's
  versions; then ``uv python find 3.13``).
- It needs DuckDB's icu, ducklake and spatial extensions, which DuckDB downloads at start-up; offline
  that fails and every request answers 400. PyPI ships those extensions as wheels only for duckdb
  1.5.5, so duckdb 1.5.5 and the three wheels are installed in a *second* pip step (they override
  local-bigquery's declared ``duckdb>=2.0.0``; the two cannot be one command), then each extension is
  ``INSTALL``ed from its wheel into a DuckDB extension directory kept inside the cache. The emulator
  process runs with ``HOME`` pointing there (:func:`emulator_env`), so the user's home is never touched.
- The environment is about 640 MB and takes a while to build: it is cached under
  ``~/.cache/possync/emulator-<hash of the versions>`` (the caller may choose another directory),
  built under a file lock (two test sessions or a demo may start at once), and marked complete only
  when every step, including loading the extensions offline, has worked. An incomplete build is
  thrown away and redone.

Running the installed emulator is ``sandbox/emulator.py``'s job.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from sandbox.local_service import log_tail

__all__ = [
    "DUCKDB_EXTENSIONS",
    "DUCKDB_VERSION",
    "INSTALL_STEP_TIMEOUT_SECONDS",
    "LOCAL_BIGQUERY_VERSION",
    "EmulatorError",
    "default_cache_dir",
    "emulator_env",
    "ensure_emulator_installed",
    "find_python313",
    "log_tail",
]

#: The emulator release this recipe was measured with.
LOCAL_BIGQUERY_VERSION = "0.4.0"
#: The only DuckDB release whose extensions PyPI ships as wheels.
DUCKDB_VERSION = "1.5.5"
#: DuckDB extensions local-bigquery loads at start-up.
DUCKDB_EXTENSIONS = ("icu", "ducklake", "spatial")
#: How long one pip step may take, seconds (about 16 s from a warm registry cache).
INSTALL_STEP_TIMEOUT_SECONDS = 900.0
_COMPLETE_MARKER = "complete.json"

_HOW_TO_GET_PYTHON = (
    "the local BigQuery emulator needs Python 3.13+: install one (e.g. `pyenv install 3.13`, "
    "`uv python install 3.13` or your system's python3.13 package) and put `python3.13` on PATH or set "
    "POSSYNC_EMULATOR_PYTHON to its path; or set POSSYNC_BIGQUERY_ENDPOINT to any BigQuery-compatible "
    "endpoint (`docker-compose up bigquery-emulator` serves one on http://127.0.0.1:9050)"
)

# Installs each extension from its wheel into DuckDB's extension directory (under $HOME), then
# proves that a fresh connection loads all of them with no network.
_INSTALL_EXTENSIONS_SCRIPT = """
import importlib, pathlib, sys
import duckdb
version, names = sys.argv[1], sys.argv[2:]
con = duckdb.connect()
for name in names:
    package = importlib.import_module("duckdb_extension_" + name)
    folder = pathlib.Path(package.__file__).parent / "extensions" / ("v" + version)
    path = folder / (name + ".duckdb_extension")
    con.execute("INSTALL '" + str(path) + "'")
con.close()
con = duckdb.connect(config={"TimeZone": "UTC", "autoinstall_known_extensions": False})
for name in names:
    con.execute("LOAD " + name)
print("extensions loaded:", ", ".join(names))
"""


class EmulatorError(RuntimeError):
    """The emulator could not be installed or started; the message says why and what to do."""


def _say(message: str) -> None:
    # Progress for the slow first install goes to stderr, never into a command's stdout.
    print(f"[bigquery-emulator] {message}", file=sys.stderr, flush=True)


def _python_version(executable: str) -> tuple[int, int] | None:
    try:
        result = subprocess.run(
            [executable, "-c", "import sys; print(sys.version_info[0], sys.version_info[1])"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        # A pyenv shim for a version that is not selected exits 127 with "command not found".
        return None
    major, minor = result.stdout.split()
    return int(major), int(minor)


def _candidates() -> Iterator[str]:
    on_path = shutil.which("python3.13")
    if on_path:
        yield on_path
    pyenv = shutil.which("pyenv")
    roots = []
    if pyenv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run([pyenv, "root"], capture_output=True, text=True, timeout=30, check=False)
            if result.returncode == 0 and result.stdout.strip():
                roots.append(Path(result.stdout.strip()))
    roots.append(Path.home() / ".pyenv")
    for root in roots:
        for version_dir in sorted((root / "versions").glob("3.13*"), reverse=True):
            binary = version_dir / "bin" / "python3.13"
            if binary.is_file():
                yield str(binary)
    uv = shutil.which("uv")
    if uv:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            result = subprocess.run(
                [uv, "python", "find", "3.13"], capture_output=True, text=True, timeout=60, check=False
            )
            if result.returncode == 0 and result.stdout.strip():
                yield result.stdout.strip()


def find_python313(configured: str | None = None) -> str:
    """A Python 3.13+ interpreter for the emulator's environment.

    Args:
        configured: an explicit interpreter path (the caller reads ``POSSYNC_EMULATOR_PYTHON``);
            when given it must work, there is no fallback.

    Returns:
        The interpreter's path.

    Raises:
        EmulatorError: if none is found (or ``configured`` is not a working 3.13+), saying how to get one.
    """
    if configured:
        version = _python_version(configured)
        if version is None or version < (3, 13):
            raise EmulatorError(
                f"the configured emulator Python {configured!r} is not a working Python 3.13+ "
                f"(found {version}); {_HOW_TO_GET_PYTHON}"
            )
        return configured
    for candidate in _candidates():
        version = _python_version(candidate)
        if version is not None and version >= (3, 13):
            return candidate
    raise EmulatorError(f"no Python 3.13 found; {_HOW_TO_GET_PYTHON}")


def _versions_key(python_version: tuple[int, int]) -> str:
    pinned = {
        "local-bigquery": LOCAL_BIGQUERY_VERSION,
        "duckdb": DUCKDB_VERSION,
        "extensions": list(DUCKDB_EXTENSIONS),
        "python": f"{python_version[0]}.{python_version[1]}",
    }
    return json.dumps(pinned, sort_keys=True)


def default_cache_dir(python: str) -> Path:
    """``~/.cache/possync/emulator-<hash>``, the hash covering every pinned version and Python's.

    Args:
        python: the interpreter the environment is built with.
    """
    version = _python_version(python) or (0, 0)
    digest = hashlib.sha256(_versions_key(version).encode()).hexdigest()[:12]
    return Path.home() / ".cache" / "possync" / f"emulator-{digest}"


@contextlib.contextmanager
def _install_lock(cache_dir: Path) -> Iterator[None]:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / "install.lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"another process is installing the emulator in {cache_dir}; waiting for it ...")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _run_step(
    description: str, command: list[str], *, log_path: Path, env: dict[str, str] | None = None
) -> None:
    _say(description)
    started = time.monotonic()
    with log_path.open("ab") as log:
        log.write(f"\n$ {' '.join(command)}\n".encode())
        log.flush()
        try:
            result = subprocess.run(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                timeout=INSTALL_STEP_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise EmulatorError(
                f"{description} took longer than {INSTALL_STEP_TIMEOUT_SECONDS:g} s; log {log_path}:\n"
                f"{log_tail(log_path)}"
            ) from exc
    if result.returncode != 0:
        raise EmulatorError(
            f"{description} failed (exit {result.returncode}); log {log_path}:\n{log_tail(log_path)}"
        )
    _say(f"  done in {time.monotonic() - started:.1f} s")


def ensure_emulator_installed(python: str | None = None, *, cache_dir: Path | None = None) -> Path:
    """Build the emulator's environment once and return its directory (reused when complete).

    Args:
        python: interpreter path to build with (``POSSYNC_EMULATOR_PYTHON``, read by the caller);
            found by :func:`find_python313` when ``None``.
        cache_dir: where the environment lives; :func:`default_cache_dir` when ``None``.

    Returns:
        The cache directory, holding ``venv/`` and ``home/`` (DuckDB's extension directory).

    Raises:
        EmulatorError: if no Python 3.13 exists or a step fails (with the install log's tail).
    """
    interpreter = find_python313(python)
    cache = cache_dir or default_cache_dir(interpreter)
    if (cache / _COMPLETE_MARKER).is_file():
        return cache
    with _install_lock(cache):
        if (cache / _COMPLETE_MARKER).is_file():
            return cache  # another process finished it while we waited
        venv, home, log_path = cache / "venv", cache / "home", cache / "install.log"
        # Whatever is here is a build that died half-way: start again from nothing.
        shutil.rmtree(venv, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)
        home.mkdir(parents=True)
        log_path.write_text("")
        _say(f"first use: building the emulator's environment in {cache} (about a minute, ~640 MB)")
        pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
        _run_step(
            f"creating a Python 3.13 venv with {interpreter}",
            [interpreter, "-m", "venv", str(venv)],
            log_path=log_path,
        )
        _run_step(
            f"installing local-bigquery=={LOCAL_BIGQUERY_VERSION}",
            [*pip, f"local-bigquery=={LOCAL_BIGQUERY_VERSION}"],
            log_path=log_path,
        )
        _run_step(
            f"installing duckdb=={DUCKDB_VERSION} and its extension wheels ({', '.join(DUCKDB_EXTENSIONS)})",
            [
                *pip,
                f"duckdb=={DUCKDB_VERSION}",
                *(f"duckdb-extension-{name}=={DUCKDB_VERSION}" for name in DUCKDB_EXTENSIONS),
            ],
            log_path=log_path,
        )
        _run_step(
            "installing the DuckDB extensions into the cache's extension directory",
            [
                str(venv / "bin" / "python"),
                "-c",
                _INSTALL_EXTENSIONS_SCRIPT,
                DUCKDB_VERSION,
                *DUCKDB_EXTENSIONS,
            ],
            log_path=log_path,
            env=emulator_env(home),
        )
        marker = {
            "python": interpreter,
            "versions": json.loads(_versions_key(_python_version(interpreter) or (0, 0))),
        }
        (cache / (_COMPLETE_MARKER + ".tmp")).write_text(json.dumps(marker, indent=2))
        # Rename is atomic: a reader sees either no marker or a whole one.
        (cache / (_COMPLETE_MARKER + ".tmp")).replace(cache / _COMPLETE_MARKER)
        _say("emulator environment ready")
    return cache


def emulator_env(home: Path) -> dict[str, str]:
    """The environment for the emulator's processes, with ``HOME`` at ``home`` (the cache's)."""
    # Only the emulator's process sees this HOME: DuckDB keeps its extensions under $HOME/.duckdb.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["HOME"] = str(home)
    # local-bigquery reads its own settings from unprefixed variables (DATA_DIR, BIGQUERY_PORT...):
    # the command line sets those that matter, and these must not leak in from the caller.
    for name in ("DATA_DIR", "BIGQUERY_PORT", "BIGQUERY_HOST", "GRPC_PORT", "DEFAULT_PROJECT_ID"):
        env.pop(name, None)
    return env
