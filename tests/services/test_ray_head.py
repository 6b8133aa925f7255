"""The local head's port handling, without Ray: a stopped head's dashboard port must be free when
``stop`` returns (a dying dashboard outlives ``ray start`` by a moment), and a connection the
kernel made to itself is not a listener."""

from __future__ import annotations

import logging
import socket
import subprocess
import threading
import time

from services import ray_head
from services.ray_head import LocalRayHead, free_port, port_free


def listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def exited_head(port: int, tmp_path) -> LocalRayHead:
    """A head whose ``ray start`` has exited while its dashboard may still listen."""
    process = subprocess.Popen(["true"])
    process.wait()
    return LocalRayHead(process, f"http://127.0.0.1:{port}", "127.0.0.1:1", tmp_path / "log")


def test_port_free_sees_a_listener_and_its_absence():
    sock = listener()
    port = sock.getsockname()[1]
    assert not port_free(port)
    sock.close()
    assert port_free(port)
    assert port_free(free_port())


def test_a_connection_to_itself_is_not_a_listener(monkeypatch):
    class SelfConnected(socket.socket):
        """What TCP's simultaneous open leaves: the source and the destination are one address."""

        def connect_ex(self, address):
            return 0

        def getsockname(self):
            return ("127.0.0.1", 40000)

        def getpeername(self):
            return ("127.0.0.1", 40000)

    monkeypatch.setattr(ray_head.socket, "socket", SelfConnected)
    assert port_free(40000)


def test_stop_returns_once_the_dashboard_port_is_free(tmp_path):
    sock = listener()
    port = sock.getsockname()[1]
    head = exited_head(port, tmp_path)
    closer = threading.Timer(0.6, sock.close)  # the dashboard dies after `ray start` has
    started = time.monotonic()
    closer.start()
    head.stop()
    assert time.monotonic() - started >= 0.5
    assert port_free(port)


def test_a_port_that_stays_taken_is_logged_not_waited_on_forever(tmp_path, caplog):
    sock = listener()
    port = sock.getsockname()[1]
    try:
        with caplog.at_level(logging.WARNING, logger="services.ray_head"):
            assert not exited_head(port, tmp_path).wait_released(timeout=0.5)
        assert f"dashboard port {port} is still taken" in caplog.text
    finally:
        sock.close()
