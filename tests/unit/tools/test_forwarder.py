"""Unit tests of the pod sandboxes' TCP relay (tools/localcluster/forwarder.py), on loopback in
one network namespace: what crosses namespaces is the sandbox's business (test_podns.py)."""
import importlib.util
import os
import socket
import threading
import time
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[3] / "tools" / "localcluster" / "forwarder.py"
_spec = importlib.util.spec_from_file_location("forwarder", _PATH)
fw = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fw)


@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:5432", ("127.0.0.1", 5432)),
    ("127.140.3.9:1", ("127.140.3.9", 1)),
    ("127.0.0.1:65535", ("127.0.0.1", 65535)),
])
def test_parse_endpoint(text, expected):
    assert fw.parse_endpoint(text) == expected


@pytest.mark.parametrize("text, problem", [
    ("10.0.0.1:5432", "not on 127.0.0.0/8"),
    ("0.0.0.0:80", "not on 127.0.0.0/8"),
    ("localhost:5432", "not ADDRESS:PORT"),
    ("127.0.0.1", "not ADDRESS:PORT"),
    ("127.0.0.1:0", "not ADDRESS:PORT"),
    ("127.0.0.1:65536", "not ADDRESS:PORT"),
    ("[::1]:80", "not ADDRESS:PORT"),
    ("127.0.0.1:http", "not ADDRESS:PORT"),
])
def test_parse_endpoint_refuses(text, problem):
    with pytest.raises(ValueError, match=problem):
        fw.parse_endpoint(text)


class EchoServer:
    """Upstream for the tests: answers each connection with what it received, upper-cased, and
    closes its side when the client half-closes."""

    def __init__(self):
        self.sock = fw.listen(("127.0.0.1", 0))
        self.address = self.sock.getsockname()
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _peer = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    @staticmethod
    def _echo(conn):
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    conn.shutdown(socket.SHUT_WR)
                    return
                conn.sendall(data.upper())

    def close(self):
        self.sock.close()


@pytest.fixture()
def echo():
    server = EchoServer()
    yield server
    server.close()


@pytest.fixture()
def forward(echo):
    fwd = fw.Forward(fw.listen(("127.0.0.1", 0)), fw.connector(echo.address))
    fwd.start()
    yield fwd, fwd.listener.getsockname()
    fwd.close()


def recv_all(sock):
    chunks = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def test_relays_both_ways_and_passes_the_half_close_on(forward):
    _fwd, address = forward
    payload = os.urandom(3 * fw.BUFFER + 17).hex().encode()    # several buffers' worth
    with socket.create_connection(address, timeout=10) as client:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)      # the echo server only answers its end after this
        assert recv_all(client) == payload.upper()


def test_many_concurrent_connections_each_get_their_own_answer(forward):
    _fwd, address = forward
    results = {}

    def one(i):
        with socket.create_connection(address, timeout=10) as client:
            client.sendall(b"conn-%d" % i)
            client.shutdown(socket.SHUT_WR)
            results[i] = recv_all(client)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(40)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert results == {i: b"CONN-%d" % i for i in range(40)}


def test_upstream_that_refuses_resets_the_client():
    dead = fw.listen(("127.0.0.1", 0))
    address = dead.getsockname()
    dead.close()                              # nothing listens there any more
    fwd = fw.Forward(fw.listen(("127.0.0.1", 0)), fw.connector(address))
    fwd.start()
    try:
        # The reset may reach the client while its connect returns, or at its first send or read.
        with pytest.raises(ConnectionResetError):
            with socket.create_connection(fwd.listener.getsockname(), timeout=10) as client:
                client.sendall(b"x")
                client.recv(10)
    finally:
        fwd.close()


def test_upstream_closing_first_reaches_the_client():
    """A server that closes (e.g. an idle timeout) ends the client's connection too."""
    server = fw.listen(("127.0.0.1", 0))

    def close_at_once():
        conn, _peer = server.accept()
        conn.sendall(b"bye")
        conn.close()

    threading.Thread(target=close_at_once, daemon=True).start()
    fwd = fw.Forward(fw.listen(("127.0.0.1", 0)), fw.connector(server.getsockname()))
    fwd.start()
    try:
        with socket.create_connection(fwd.listener.getsockname(), timeout=10) as client:
            assert recv_all(client) == b"bye"
    finally:
        fwd.close()
        server.close()


def test_close_stops_accepting(forward):
    fwd, address = forward
    fwd.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2).close()


def test_relay_threads_end_with_their_connection(forward):
    _fwd, address = forward
    before = threading.active_count()
    for _round in range(5):
        with socket.create_connection(address, timeout=10) as client:
            client.sendall(b"x")
            client.shutdown(socket.SHUT_WR)
            assert recv_all(client) == b"X"
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert threading.active_count() <= before
