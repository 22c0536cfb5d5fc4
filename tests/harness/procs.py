"""Process harness shared by the chaos tests: wait until a server process accepts connections."""

from __future__ import annotations

import socket
import subprocess
import time


def wait_port(port: int, proc: subprocess.Popen | None, timeout: float = 60.0, what: str = "the hub") -> None:
    """Until something accepts TCP connections on 127.0.0.1:``port``; fails if ``proc`` exits or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            assert proc is not None and proc.poll() is None, f"{what} exited on its own"
            assert time.monotonic() < deadline, f"{what} did not serve on port {port} within {timeout:g} s"
            time.sleep(0.05)
