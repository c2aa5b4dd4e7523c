"""A proxy in front of the broker that keeps what each client sent, to tell a closed connection from a dropped one.

A client that closes properly sends AMQP's Connection.Close (or answers the broker's with
Connection.Close-Ok) before its socket goes; one that just exits leaves the broker to log
`client unexpectedly closed TCP connection`.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from dataclasses import dataclass, field
from urllib.parse import quote

from tests.support.smtp import free_port

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
METHOD_FRAME = 1
FRAME_END = 0xCE
CONNECTION_CLASS = 10
CONNECTION_CLOSE, CONNECTION_CLOSE_OK = 50, 51


@dataclass
class ClientStream:
    """Every byte one client sent on one connection; `ended` once the client shut its side."""

    sent: bytearray = field(default_factory=bytearray)
    ended: threading.Event = field(default_factory=threading.Event)

    def connection_methods(self) -> list[int]:
        """The method ids of the Connection class (channel 0) the client sent, in order."""
        data = bytes(self.sent)
        if not data.startswith(PROTOCOL_HEADER):
            raise ValueError(f"not an AMQP 0-9-1 client: it began with {data[:8]!r}")
        methods = []
        offset = len(PROTOCOL_HEADER)
        while offset + 7 <= len(data):
            frame_type, channel, size = struct.unpack_from(">BHI", data, offset)
            end = offset + 7 + size
            if end >= len(data) or data[end] != FRAME_END:
                break  # cut short by the socket's end: nothing after it was sent
            if frame_type == METHOD_FRAME and channel == 0:
                class_id, method_id = struct.unpack_from(">HH", data, offset + 7)
                if class_id == CONNECTION_CLASS:
                    methods.append(method_id)
            offset = end + 1
        return methods

    @property
    def closed_properly(self) -> bool:
        return bool({CONNECTION_CLOSE, CONNECTION_CLOSE_OK} & set(self.connection_methods()))


class RecordingAmqpProxy:
    """Forwards 127.0.0.1:port to the broker, keeping a ClientStream per connection."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = free_port()
        self.streams: list[ClientStream] = []
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()

    def __enter__(self) -> RecordingAmqpProxy:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._listener is not None:
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None

    def url(self, user: str, password: str, vhost: str) -> str:
        return f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@127.0.0.1:{self.port}/{quote(vhost, safe='')}"

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target, timeout=5)
            upstream.settimeout(None)
            stream = ClientStream()
            with self._lock:
                self.streams.append(stream)
            threading.Thread(target=self._pump, args=(client, upstream, stream), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, None), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, record: ClientStream | None) -> None:
        try:
            while data := source.recv(65536):
                if record is not None:
                    record.sent.extend(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            if record is not None:
                record.ended.set()
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def take_streams(self) -> list[ClientStream]:
        """The connections recorded so far, forgotten here so that the next command starts afresh."""
        with self._lock:
            taken, self.streams = self.streams, []
        return taken
