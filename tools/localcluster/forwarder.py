"""TCP relay between two network namespaces, for the pod sandboxes of the local pod runner.

A Forward owns a listening socket and a `connect` callable that opens the other side; each
accepted connection is relayed byte for byte in both directions, half-closes included, until both
sides are done. A socket belongs to the network namespace of the thread that created it, so the
sandbox (podns.py) creates a listener in one namespace and calls serve() from a thread that has
entered the other: `connect` then creates its sockets there. Nothing here knows about namespaces.

Addresses are "A.B.C.D:PORT" on 127.0.0.0/8 only: this relay never reaches off the machine.
"""
import contextlib
import ipaddress
import socket
import struct
import threading

BUFFER = 65536
CONNECT_TIMEOUT = 5.0


def parse_endpoint(text):
    """("127.0.0.1", 5432) from "127.0.0.1:5432"; ValueError for anything but IPv4 loopback."""
    host, sep, port = str(text).rpartition(":")
    try:
        address = ipaddress.IPv4Address(host)
        number = int(port)
    except ValueError:
        address, number = None, 0
    if not sep or address is None or not 0 < number < 65536:
        raise ValueError("endpoint %r is not ADDRESS:PORT with an IPv4 address" % (text,))
    if not address.is_loopback:
        raise ValueError("endpoint %r is not on 127.0.0.0/8" % (text,))
    return str(address), number


def listen(address, backlog=128):
    """A TCP listener on address (host, port), in the calling thread's network namespace."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


def connector(address):
    """A `connect` for Forward: a new TCP connection to address, made by the calling thread."""
    def connect():
        sock = socket.create_connection(address, timeout=CONNECT_TIMEOUT)
        sock.settimeout(None)
        return sock
    return connect


def _shutdown(sock, how):
    with contextlib.suppress(OSError):
        sock.shutdown(how)


class Relay:
    """One accepted connection and its upstream: two pumps, closed when both have ended."""

    def __init__(self, client, upstream):
        self.sockets = (client, upstream)
        self.lock = threading.Lock()
        self.running = 2
        for sock in self.sockets:
            # The relay must not add Nagle delays to small request/response exchanges.
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self):
        client, upstream = self.sockets
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while True:
                data = src.recv(BUFFER)
                if not data:
                    _shutdown(dst, socket.SHUT_WR)   # a half-close goes through as one
                    break
                dst.sendall(data)
        except OSError:
            # A reset or a failed send on either side ends the whole connection.
            for sock in self.sockets:
                _shutdown(sock, socket.SHUT_RDWR)
        with self.lock:
            self.running -= 1
            last = self.running == 0
        if last:
            for sock in self.sockets:
                sock.close()


class Forward:
    """Accepts on `listener` and relays each connection to what `connect()` returns. A connection
    that cannot be made upstream is reset, as a refused connection would be."""

    def __init__(self, listener, connect):
        self.listener = listener
        self.connect = connect

    def serve(self):
        """Accept until close(); each relay runs in threads of its own."""
        while True:
            try:
                client, _peer = self.listener.accept()
            except OSError:
                return                      # closed
            try:
                upstream = self.connect()
            except OSError:
                # struct linger {on, 0 s}: close() sends a reset, as a refused connection would.
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                client.close()
                continue
            Relay(client, upstream).start()

    def start(self):
        """serve() in a daemon thread, which inherits the calling thread's network namespace."""
        thread = threading.Thread(target=self.serve, daemon=True)
        thread.start()
        return thread

    def close(self):
        # shutdown() wakes an accept() blocked in another thread; close() alone would not.
        _shutdown(self.listener, socket.SHUT_RDWR)
        self.listener.close()
