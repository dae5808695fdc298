"""Detached server processes that outlive the command that started them: each runs in its own session, and a pid
file records its pid and its start time, so that `stop` finds it again and a stale file (the process gone, or
its pid reused by another) is recognised and removed."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/PID/stat fields after the command name (state first), None when there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2 :].split()


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (with the pid, it names one process), None if gone."""
    fields = _stat_fields(pid)
    return fields[19] if fields else None


def alive(pid: int, started: str | None = None) -> bool:
    """Whether `pid` runs (a zombie does not) and, given `started`, is the process that started then."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return started is None or fields[19] == started


def read_pid_file(pid_file: Path) -> tuple[int, str] | None:
    """(pid, start time) recorded in `pid_file`, None when there is none or it is unreadable."""
    try:
        pid, started = pid_file.read_text().split()
        return int(pid), started
    except (OSError, ValueError):
        return None


def start_detached(command: list[str], env: dict[str, str], log: Path, pid_file: Path) -> subprocess.Popen:
    """Start `command` in a session of its own (output appended to `log`) and record it in `pid_file`."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    pid_file.write_text(f"{process.pid} {start_time(process.pid)}\n")
    return process


@dataclass(frozen=True)
class RecordedProcess:
    """A process known by its pid file, with the part of `subprocess.Popen` that servers.wait_healthy uses: a
    server that an earlier command started is awaited like a new one."""

    pid: int
    started: str
    args: list[str]

    def poll(self) -> int | None:
        """None while the process runs, else -1 (its exit status belongs to another parent)."""
        return None if alive(self.pid, self.started) else -1


def recorded_process(pid_file: Path) -> RecordedProcess | None:
    """The running process that `pid_file` (named after its service) records, None when there is none; a stale
    file is removed."""
    record = read_pid_file(pid_file)
    if record is None or not alive(*record):
        pid_file.unlink(missing_ok=True)
        return None
    return RecordedProcess(*record, args=[pid_file.stem])


def running_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` when that process still runs; a stale file is removed."""
    process = recorded_process(pid_file)
    return process.pid if process else None


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group `pgid`."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid:
                members.append(int(entry.name))
    return members


def stop_pid_file(pid_file: Path, timeout_s: float = 30.0, kill_timeout_s: float = 10.0) -> str:
    """SIGTERM to the recorded process's group (its own: started with a session of its own), SIGKILL to the group
    after `timeout_s`; done when no process of the group is left, the pid file then removed. Returns what happened:
    'stopped', 'killed', 'not running', 'stale pid file removed', or, when the group outlives SIGKILL by
    `kill_timeout_s` (a process stuck in the kernel), a sentence naming its pids (the pid file stays)."""
    record = read_pid_file(pid_file)
    if record is None:
        pid_file.unlink(missing_ok=True)
        return "not running"
    pid, started = record
    _reap(pid)
    leader = start_time(pid)
    # the group is this record's while the leader runs, or, with the leader gone, while members are left: the
    # kernel hands out no pid that a live process group still uses
    if (leader is not None and leader != started) or not group_members(pid):
        pid_file.unlink(missing_ok=True)
        return "stale pid file removed"
    for sig, outcome, wait_s in ((signal.SIGTERM, "stopped", timeout_s), (signal.SIGKILL, "killed", kill_timeout_s)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        if _group_ended(pid, wait_s):
            pid_file.unlink(missing_ok=True)
            return outcome
    left = group_members(pid)
    return f"still running after SIGKILL: pids {' '.join(map(str, left))} (see `ps -o pid,stat,cmd -g {pid}`)"


def _group_ended(pgid: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for process group `pgid` to have no live process; whether it has none."""
    deadline = time.monotonic() + timeout_s
    while True:
        _reap(pgid)
        if not group_members(pgid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def _reap(pid: int) -> None:
    """Collect the exit status when the process is this one's child (started by `up` in this process)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def tree_rss_mib(pid: int) -> float:
    """Resident memory of `pid` and all its descendants, MiB."""
    children: dict[int, list[int]] = {}
    rss_pages: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
            rss_pages[int(entry.name)] = int(fields[21])
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        total += rss_pages.get(current, 0)
        todo.extend(children.get(current, []))
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20
