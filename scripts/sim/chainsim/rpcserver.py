"""bitcoind's HTTP front (httpserver.cpp + httprpc.cpp): POST only, HTTP Basic auth, keep-alive.

- ``/`` and ``/wallet/...`` answer JSON-RPC; any other path is a 404 with no body.
- A method other than POST: 405 ``JSONRPC server handles only POST requests``.
- No ``Authorization`` header: 401 at once; a wrong one: 401 after 250 ms
  (Core's brute-force deterrent). Both with an empty body and
  ``WWW-Authenticate: Basic realm="jsonrpc"``.
- Replies that are not JSON carry libevent's default content type
  ``text/html; charset=ISO-8859-1`` (python-bitcoinrpc reports those as
  "non-JSON HTTP response with '401 Unauthorized' from server").
- Idle connections close after 30 s (``-rpcservertimeout``).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

log = logging.getLogger(__name__)

WWW_AUTHENTICATE = 'Basic realm="jsonrpc"'
DEFAULT_CONTENT_TYPE = "text/html; charset=ISO-8859-1"
RPC_SERVER_TIMEOUT = 30
AUTH_FAILURE_DELAY = 0.25


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for the
    # client's delayed ACK (about 40 ms a call, measured by `dctrl bench chain`).
    disable_nagle_algorithm = True
    timeout = RPC_SERVER_TIMEOUT
    server: "RpcHttpServer"

    def log_message(self, fmt, *args):
        log.debug("%s " + fmt, self.address_string(), *args)

    def _reply(self, status: int, body: bytes = b"", content_type: str | None = None, headers=()):
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Type", content_type or DEFAULT_CONTENT_TYPE)
        self.send_header("Date", self.date_time_string())
        if status != 204:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body and self.command != "HEAD":
            self.wfile.write(body)

    def _refusing(self) -> bool:
        if self.server.refusing():
            self.close_connection = True
            return True
        return False

    def _not_post(self):
        if self._refusing():
            return
        self._read_body()
        self._reply(405, b"JSONRPC server handles only POST requests")

    do_GET = do_PUT = do_HEAD = _not_post

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def do_POST(self):
        if self._refusing():
            return
        body = self._read_body()
        path = self.path.split("?", 1)[0]
        if path != "/" and not path.startswith("/wallet/"):
            self._reply(404)
            return
        auth = self.headers.get("Authorization")
        if auth is None:
            self._reply(401, headers=[("WWW-Authenticate", WWW_AUTHENTICATE)])
            return
        if not self.server.authorized(auth):
            log.warning("ThreadRPCServer incorrect password attempt from %s", self.address_string())
            time.sleep(AUTH_FAILURE_DELAY)  # Core's UninterruptibleSleep(250ms), not a test wait
            self._reply(401, headers=[("WWW-Authenticate", WWW_AUTHENTICATE)])
            return
        status, reply = self.server.endpoint.handle(body)
        if reply is None:
            self._reply(status)
        else:
            self._reply(status, reply, "application/json")
        if self.server.after_reply is not None:
            self.server.after_reply()


class KeepAliveHTTPServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server that can stop while clients hold keep-alive connections:
    it tracks open connections and cuts them off at stop(), so handler threads end."""

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    thread_name = "chainsim-http"

    def __init__(self, server_address, handler):
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        self._thread = None
        super().__init__(server_address, handler)

    @property
    def port(self) -> int:
        return self.server_address[1]

    def handle_error(self, request, client_address):
        import sys

        if isinstance(sys.exc_info()[1], ConnectionError):  # a client killed mid-request (kill -9 tests)
            return
        super().handle_error(request, client_address)

    def process_request(self, request, client_address):
        with self._conns_lock:
            self._conns.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._conns_lock:
            self._conns.discard(request)
        super().shutdown_request(request)

    def start(self):
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"{self.thread_name}:{self.port}", daemon=True)
        self._thread.start()

    def stop(self):
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        with self._conns_lock:
            conns, self._conns = list(self._conns), set()
        for conn in conns:  # keep-alive clients: cut them off so their threads end
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.server_close()


class RpcHttpServer(KeepAliveHTTPServer):
    thread_name = "chainsim-rpc"

    def __init__(self, host: str, port: int, endpoint, user: str, password: str):
        self.endpoint = endpoint
        self._user = user.encode()
        self._password = password.encode()
        self._refuse_until = 0.0
        self.after_reply = None  # called after each JSON-RPC reply is written (the `stop` RPC uses it)
        super().__init__((host, port), _Handler)

    # -- auth ----------------------------------------------------------------

    def authorized(self, header: str) -> bool:
        if not header.startswith("Basic "):
            return False
        try:
            decoded = base64.b64decode(header[6:].strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        user, sep, password = decoded.partition(b":")
        if not sep:
            return False
        ok_user = hmac.compare_digest(user, self._user)
        ok_password = hmac.compare_digest(password, self._password)
        return ok_user and ok_password

    # -- dropped connections (sim_stop_rpc) ------------------------------------

    def refuse_for(self, seconds: float):
        self._refuse_until = time.monotonic() + max(0.0, seconds)

    def refusing(self) -> bool:
        return time.monotonic() < self._refuse_until

    def verify_request(self, request, client_address) -> bool:
        # False makes socketserver close the new connection without a byte sent.
        return not self.refusing()

