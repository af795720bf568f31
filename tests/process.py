"""A ``roundtable`` subprocess whose output a test can wait on line by line.

Shared by the CLI tests and the cluster harness: both start real servers and wait for
what they print, and a failure must show everything the process said so far.
"""

from __future__ import annotations

import queue
import subprocess
import threading
import time


class WatchedProcess:
    """Reads the process's combined stdout/stderr in a thread into a queue."""

    name: str = ""
    proc: subprocess.Popen[str]

    def _watch(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def line_with(self, needle: str, timeout: float = 30.0) -> str:
        """The first line not yet seen that contains ``needle``; fails with the output."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.proc.poll() is not None:
                    break
                continue
            self.seen.append(line)
            if needle in line:
                return line
        who = f"{self.name}: " if self.name else ""
        raise AssertionError(
            f"{who}{needle!r} not printed; output so far:\n" + "\n".join(self.seen)
        )

    def output(self) -> str:
        """Everything printed so far."""
        while True:
            try:
                self.seen.append(self.lines.get_nowait())
            except queue.Empty:
                return "\n".join(self.seen)
