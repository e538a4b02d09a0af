"""Processes as Linux's ``/proc`` shows them: children, peak memory and CPU time, for benchmark figures."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["child_pids", "cpu_seconds", "status_kib", "total_cpu_seconds"]


def _stat_fields(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on


def child_pids(pid: int) -> list[int]:
    """Live child processes of ``pid``, oldest first (Dramatiq forks its workers before fork processes)."""
    found: list[tuple[int, int]] = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = _stat_fields(int(entry.name))
            except (OSError, ValueError):
                continue
            if int(fields[1]) == pid:
                found.append((int(fields[19]), int(entry.name)))  # (starttime, pid)
    return [child for _, child in sorted(found)]


def status_kib(pid: int, key: str) -> int:
    """A ``/proc/<pid>/status`` figure given in KiB, e.g. ``VmHWM`` (peak RSS); 0 when absent."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time a process (all its threads) has used so far, seconds.

    Raises:
        OSError: the process is gone.
    """
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def total_cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time of these processes (all their threads), seconds; those gone count 0."""
    ticks = 0
    for pid in pids:
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")
