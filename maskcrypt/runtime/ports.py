"""Free TCP ports for the Ray and Serve processes that tests and benchmarks start on explicit ports.

Asking the OS for port 0 returns a port from the ephemeral range (32768-60999 on Linux),
the same range every outgoing connection draws from: between the test choosing such a
port and a Ray agent binding it, another connection can take it, and the agent (with
the raylet, which fate-shares with it) exits with "Address already in use". Ports here
come from 20000-32767 instead: above Ray's worker ports (10002-19999), below the
ephemeral range, checked free when chosen and never handed out twice in one process.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 32767
_given: set[int] = set()


def free_port() -> int:
    """A port no one listens on now and that no outgoing connection will be given."""
    rng = random.Random()
    for _ in range(1000):
        port = rng.randint(LOW, HIGH)
        if port in _given:
            continue
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
        _given.add(port)
        return port
    raise RuntimeError(f"no free port in {LOW}-{HIGH}")
