"""HTTP servers a test puts in front of the fake GitHub: a forward proxy, a TLS front and a redirect.

Each notes what it was asked for, so that a test can tell whether a request went through it.
"""

from __future__ import annotations

import http.client
import select
import socket
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from urllib.parse import urlsplit

TUNNEL_IDLE_SECONDS = 10


class _Front(ThreadingHTTPServer):
    daemon_threads = True
    scheme = "http"

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        super().__init__(("127.0.0.1", 0), handler)
        self.asked: list[str] = []
        self.proxy_authorizations: list[str | None] = []

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server_address[1]}"

    def __enter__(self) -> _Front:
        threading.Thread(target=self.serve_forever, daemon=True).start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.shutdown()
        self.server_close()


def _relay(handler: BaseHTTPRequestHandler, url: str) -> None:
    """Ask `url` with the handler's headers, and answer with what came back."""
    target = urlsplit(url)
    upstream = http.client.HTTPConnection(target.netloc, timeout=10)
    headers = {name: value for name, value in handler.headers.items() if not name.lower().startswith("proxy-")}
    upstream.request("GET", f"{target.path}?{target.query}", headers=headers)
    answer = upstream.getresponse()
    body = answer.read()
    upstream.close()
    handler.send_response(answer.status)
    for name, value in answer.getheaders():
        if name.lower() not in ("transfer-encoding", "connection", "content-length"):
            handler.send_header(name, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


class _Quiet(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class _ProxyHandler(_Quiet):
    server: ForwardProxy

    def do_GET(self) -> None:
        self.server.asked.append(self.path)
        self.server.proxy_authorizations.append(self.headers.get("Proxy-Authorization"))
        _relay(self, self.path)

    def do_CONNECT(self) -> None:
        self.server.asked.append(f"CONNECT {self.path}")
        self.server.proxy_authorizations.append(self.headers.get("Proxy-Authorization"))
        host, port = self.path.rsplit(":", 1)
        upstream = socket.create_connection((host, int(port)), timeout=10)
        self.send_response(200, "Connection established")
        self.end_headers()
        self.close_connection = True
        ends = [self.connection, upstream]
        try:
            while True:
                readable, _, _ = select.select(ends, [], [], TUNNEL_IDLE_SECONDS)
                if not readable:
                    return
                for end in readable:
                    data = end.recv(65536)
                    if not data:
                        return
                    (upstream if end is self.connection else self.connection).sendall(data)
        finally:
            upstream.close()


class ForwardProxy(_Front):
    """An HTTP forward proxy: `GET http://host/path` relayed, `CONNECT host:port` tunnelled."""

    def __init__(self) -> None:
        super().__init__(_ProxyHandler)


class _TlsHandler(_Quiet):
    server: TlsFront

    def do_GET(self) -> None:
        self.server.asked.append(self.path)
        _relay(self, f"{self.server.upstream}{self.path}")


class TlsFront(_Front):
    """HTTPS in front of an HTTP server, with a certificate of its own for 127.0.0.1 that no bundle trusts."""

    scheme = "https"

    def __init__(self, upstream: str, directory: Path) -> None:
        super().__init__(_TlsHandler)
        self.upstream = upstream
        self.certificate = directory / "front.pem"
        key = directory / "front.key"
        request = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
        subject = ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(self.certificate)]
        subprocess.run([*request, *subject], check=True, capture_output=True)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.certificate, key)
        self.socket = context.wrap_socket(self.socket, server_side=True)

    def certificate_directory(self, directory: Path) -> Path:
        """A directory of trusted certificates holding this one, named by its hash as OpenSSL looks it up."""
        directory.mkdir()
        subject_hash = subprocess.run(
            ["openssl", "x509", "-hash", "-noout", "-in", str(self.certificate)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        (directory / f"{subject_hash}.0").write_bytes(self.certificate.read_bytes())
        return directory


class _RedirectHandler(_Quiet):
    server: Redirect

    def do_GET(self) -> None:
        self.server.asked.append(self.path)
        self.send_response(301)
        self.send_header("Location", f"{self.server.location}{self.path}")
        self.send_header("Content-Length", "0")
        self.end_headers()


class Redirect(_Front):
    """Answers every request with a 301 to the same path at `location`."""

    def __init__(self, location: str) -> None:
        super().__init__(_RedirectHandler)
        self.location = location
