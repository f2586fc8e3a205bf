"""Free TCP ports on the loopback interface, for the private services of the fault tests."""

from __future__ import annotations

import socket
import time


def free_port() -> int:
    """A port nothing listens on right now (the OS picks it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def accepts(port: int, *, host: str = "127.0.0.1") -> bool:
    try:
        socket.create_connection((host, port), timeout=0.5).close()
    except OSError:
        return False
    return True


def wait_accepting(port: int, *, timeout_s: float, what: str) -> float:
    """Until something accepts connections on the port; how long that took."""
    started = time.monotonic()
    while not accepts(port):
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"{what} did not accept connections on {port} in {timeout_s} s")
        time.sleep(0.1)
    return time.monotonic() - started


def wait_refusing(port: int, *, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while accepts(port):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} still accepts connections on {port} after {timeout_s} s")
        time.sleep(0.1)
