"""Process plumbing shared by the benchmarks (``tools/bench.py``,
``tools/bench_snapshot.py``): node processes driven over stdin/stdout,
free ports, CPU accounting from /proc, and the machine's description."""

from __future__ import annotations

import json
import os
import platform
import queue
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, TextIO


def emit(**fields: Any) -> None:
    print(json.dumps(fields), flush=True)


def note(text: str) -> None:
    print(f"# {text}", file=sys.stderr, flush=True)


def free_ports(n: int) -> list[int]:
    """Ports the kernel says are free now (bound to port 0, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds all cores have spent busy since boot (/proc/stat)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return float("nan")
    idle = fields[3] + fields[4]  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "uname": " ".join(os.uname()),
            "python": platform.python_version()}


class Worker:
    """One node process; lines from its stdout arrive on a queue."""

    def __init__(self, id: str, argv: list[str], log_dir: str) -> None:
        """Run ``python *argv``; its stderr goes to ``log_dir/<id>.stderr``."""
        self.id = id
        self.stderr_path = os.path.join(log_dir, f"{id}.stderr")
        self._stderr = open(self.stderr_path, "a")
        self.proc = subprocess.Popen(
            [sys.executable, *argv],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
            text=True, bufsize=1, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue[str | None] = queue.Queue()
        assert self.proc.stdout is not None
        threading.Thread(target=self._pump, args=(self.proc.stdout,), daemon=True).start()

    def _pump(self, stdout: TextIO) -> None:
        for line in stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def send(self, command: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.id}: no answer within {timeout}s{self.tail()}") from None
        if line is None:
            raise RuntimeError(f"{self.id} exited (status {self.proc.poll()}){self.tail()}")
        return line

    def ask(self, command: str, timeout: float = 10.0) -> str:
        self.send(command)
        return self.read(timeout)

    def tail(self) -> str:
        try:
            text = Path(self.stderr_path).read_text()[-3000:]
        except OSError:
            return ""
        return f"\n--- {self.id} stderr ---\n{text}" if text.strip() else ""

    def stop(self) -> None:
        """Ask politely, then terminate, then kill; always wait."""
        proc = self.proc
        if proc.poll() is None:
            try:
                self.send("quit")
                proc.stdin.close()  # type: ignore[union-attr]
            except (OSError, ValueError):
                pass
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._stderr.close()
