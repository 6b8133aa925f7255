"""The client when a connection drops before the answer: the race CI met, where a kept-alive
connection is closed by the server as the next request goes out ("Server disconnected without
sending a response"). A raw socket server plays the server's side exactly."""

from __future__ import annotations

import json
import socket
import threading

import pytest

from services.client import ApiError, Client

JOB = {"id": "job-1", "status": "running"}


class DroppingServer:
    """Answers requests over HTTP/1.1 with keep-alive, and closes the connection without a word on
    the requests whose numbers (1-based, over all connections) are in ``drop``. Records each
    request's first line and headers."""

    def __init__(self, drop: set[int]):
        self.drop = drop
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as reader:
            while line := reader.readline():
                headers = {}
                while (header := reader.readline()) not in (b"\r\n", b""):
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                reader.read(int(headers.get("content-length", 0)))
                self.requests.append((line.decode().strip(), headers))
                if len(self.requests) in self.drop:
                    return  # closed with nothing sent
                body = json.dumps(JOB).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))  # fmt: skip

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept() of _serve, which returns
        self.listener.close()


@pytest.fixture
def server(request):
    server = DroppingServer(request.param)
    yield server
    server.close()


@pytest.fixture
def client(server):
    client = Client(server.url)
    yield client
    client.http.close()


@pytest.mark.parametrize("server", [{2}], indirect=True)
def test_a_get_on_a_connection_the_server_dropped_is_sent_again_on_a_fresh_one(server, client):
    assert client.job("job-1") == JOB
    assert client.job("job-1") == JOB  # the kept-alive connection drops it: sent again
    assert [line for line, _ in server.requests] == ["GET /v1/jobs/job-1 HTTP/1.1"] * 3
    assert server.connections >= 2


@pytest.mark.parametrize("server", [{2}], indirect=True)
def test_a_submission_is_sent_again_with_the_same_idempotency_key(server, client):
    client.job("job-1")
    assert client.submit("simclr", {}) == JOB
    (_, first), (_, again) = server.requests[1:]
    assert first["idempotency-key"] == again["idempotency-key"]
    assert first["idempotency-key"].startswith("client:")
    client.evaluate("job-1")
    assert server.requests[-1][1]["idempotency-key"] != first["idempotency-key"]


@pytest.mark.parametrize("server", [{2}], indirect=True)
def test_a_cancel_is_never_sent_twice(server, client):
    client.job("job-1")
    with pytest.raises(ApiError) as error:
        client.cancel("job-1")
    assert error.value.status == 0
    assert "POST /v1/jobs/job-1/cancel" in error.value.detail
    assert "closed the connection without a complete answer" in error.value.detail
    assert len(server.requests) == 2


@pytest.mark.parametrize("server", [{1, 2}], indirect=True)
def test_a_server_that_keeps_dropping_is_a_clear_error_after_one_more_try(server, client):
    with pytest.raises(ApiError) as error:
        client.job("job-1")
    assert error.value.status == 0
    assert "GET /v1/jobs/job-1" in error.value.detail
    assert len(server.requests) == 2
