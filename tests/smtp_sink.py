"""A real SMTP server on loopback for the mail tests (aiosmtpd, in a thread of the test process).

Its port is taken at construction (a socket bound to 127.0.0.1 port 0) and held, not
listening, until :meth:`SmtpSink.start`: before that a connection is refused, like a server
that is down, and no other test can take the port. Tests run in parallel; each has its own.

It keeps every message it accepts and can, on command: answer a code to MAIL FROM
(``mail_reply``), to RCPT for some
addresses (``rcpt_replies``), answer a code to DATA a number of times (``data_replies``),
keep a message and hold its reply until :attr:`release` is set (``stall``: a crash between
the server taking the mail and the client hearing 250), require AUTH (``auth``), serve TLS.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import threading

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult


class Handler:
    def __init__(self, sink: "SmtpSink"):
        self.sink = sink

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        if self.sink.mail_reply:
            return self.sink.mail_reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self.sink.rcpt_replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        sink = self.sink
        with sink.lock:
            sink.data_seen += 1
            queued = sink.data_replies.pop(0) if sink.data_replies else None
        if queued:
            return queued
        msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.SMTP)
        with sink.lock:  # kept, as a real server has the mail queued before it answers
            sink.messages.append((envelope.mail_from, list(envelope.rcpt_tos), msg))
        if sink.stall:  # ... and then its 250 is late: a client that dies now never hears it
            sink.stalled.set()
            while not sink.release.is_set():  # an event of another thread: poll it on the loop
                await asyncio.sleep(0.01)
        return "250 Message accepted for delivery"


class _Controller(Controller):
    def __init__(self, handler, sock, **kw):
        super().__init__(handler, hostname="127.0.0.1", port=sock.getsockname()[1], **kw)
        self._sock = sock

    def _create_server(self):
        return self.loop.create_server(self._factory_invoker, sock=self._sock, ssl=self.ssl_context)


class SmtpSink:
    def __init__(self, *, auth: dict | None = None, tls_context=None, implicit_tls: bool = False):
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused until start()
        self.port = self._sock.getsockname()[1]
        self.lock = threading.Lock()
        self.messages: list = []           # (mail_from, rcpt_tos, email.message.EmailMessage)
        self.rcpt_replies: dict[str, str] = {}
        self.mail_reply = ""               # answered to every MAIL FROM when set
        self.data_replies: list[str] = []  # answered to the next DATA commands, in order
        self.data_seen = 0
        self.stall = False
        self.stalled = threading.Event()   # a DATA is held before its reply
        self.release = threading.Event()
        self.logins: list[str] = []
        kw = {}
        if auth is not None:
            def authenticator(server, session, envelope, mechanism, data):
                ok = data is not None and auth.get(data.login.decode()) == data.password.decode()
                if ok:
                    self.logins.append(data.login.decode())
                return AuthResult(success=ok, handled=False)  # (handled: aiosmtpd sends the 535)
            # (implicit TLS: aiosmtpd does not see its own TLS and would not offer AUTH)
            kw.update(authenticator=authenticator, auth_required=True,
                      auth_require_tls=tls_context is not None and not implicit_tls)
        if tls_context is not None and implicit_tls:
            kw["ssl_context"] = tls_context
        elif tls_context is not None:
            kw.update(tls_context=tls_context, require_starttls=True)
        self._controller = _Controller(Handler(self), self._sock, **kw)
        self.running = False

    def start(self) -> "SmtpSink":
        self._controller.start()
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self.release.set()
            self._controller.stop()
            self.running = False
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()

    def received(self) -> list:
        with self.lock:
            return list(self.messages)

    def to(self, address: str) -> list:
        """The messages whose envelope went to ``address``."""
        return [m for _, rcpts, m in self.received() if address in rcpts]
