"""The SMTP transport: smtplib, one connection kept open across a batch, replies classified.

``smtp_security``: ``plain`` (a loopback relay, the tests), ``starttls`` (port 587: the
connection is upgraded before anything else, and refused if the server cannot) or ``tls``
(implicit TLS, port 465). Certificates are verified (``ssl.create_default_context``) unless
the caller hands in its own context. AUTH (``smtp_user``) only over TLS or to loopback, with
the password handed in (it comes from the Vault); the password is never logged or put in an
error (smtplib's debug output, which would print the AUTH exchange, stays off).

One message is one SMTP transaction: MAIL, RCPT, then ``before_data()`` (the dispatcher
commits the row as ``sending`` there), then DATA. What the server says decides:

- a connection that cannot be made or is lost before DATA, a 4xx anywhere, any refusal of
  MAIL FROM (it is about our sender, so about every message): :class:`MailDeferred` (the
  server does not have the mail; try again later);
- a 5xx to RCPT or DATA: :class:`MailRejected` (it never will; this message fails, the others go);
- the connection lost after DATA began, before the server's reply: :class:`MailInterrupted`
  (the server may have the mail: only this case can make a duplicate).
"""

from __future__ import annotations

import logging
import smtplib
import ssl

from proto.errors import DctrlError

from .models import LOOPBACK

log = logging.getLogger(__name__)


class MailError(DctrlError):
    """Root of MemberMail's sending errors."""

    code = "mail"


class MailDeferred(MailError, ConnectionError):
    """Not delivered, for now: connection refused or lost before DATA, or a 4xx reply."""

    code = "mail_deferred"

    def __init__(self, reason: str, connection: bool = False):
        super().__init__(reason)
        self.connection = connection  # the server could not be reached (not this message's fault)


class MailRejected(MailError, ValueError):
    """The server refused this message for good (a 5xx reply)."""

    code = "mail_rejected"


class MailInterrupted(MailError, ConnectionError):
    """The connection was lost between DATA and the server's reply: delivered or not, unknown."""

    code = "mail_interrupted"


def _reply(code: int, text) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return f"{code} {' '.join(str(text).split())}"


def _classify(code: int, text, stage: str) -> MailError:
    reason = f"{stage}: {_reply(code, text)}"
    if 500 <= code < 600:
        return MailRejected(reason)
    return MailDeferred(reason)  # 4xx, and anything unexpected: retried, never given up at once


class SmtpTransport:
    """``config``: the member_mail settings (``smtp_*``); ``password``: the AUTH password or None;
    ``tls_context``: an ``ssl.SSLContext`` (default: the system's, verifying)."""

    def __init__(self, config: dict, password: str | None = None, tls_context: ssl.SSLContext | None = None):
        self.host = config["smtp_host"]
        self.port = int(config["smtp_port"])
        self.security = config["smtp_security"]
        self.user = config["smtp_user"]
        self.timeout = float(config["smtp_timeout"])
        self._password = password
        self._tls = tls_context
        self._smtp: smtplib.SMTP | None = None
        self.auth_refused = False  # the last connection's AUTH was refused

    def __repr__(self):  # no password, ever
        return f"SmtpTransport({self.security}://{self.host}:{self.port}, user={self.user or None!r})"

    def set_password(self, password: str | None) -> None:
        """A new password (the Vault's secret changed): used from the next connection on."""
        if password != self._password:
            self._password = password
            self.close()

    @property
    def connected(self) -> bool:
        return self._smtp is not None

    def _context(self) -> ssl.SSLContext:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def connect(self) -> None:
        """Open the connection if it is not open; raises MailDeferred(connection=True)."""
        if self._smtp is not None:
            return
        if self.user and self.security == "plain" and self.host not in LOOPBACK:  # (settings() refuses it too)
            raise MailDeferred(f"SMTP AUTH refused over a plain connection to {self.host}: "
                               "set smtp_security to starttls or tls", connection=True)
        smtp = None
        try:
            if self.security == "tls":
                smtp = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=self._context())
            else:
                smtp = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            smtp.ehlo()
            if self.security == "starttls":
                smtp.starttls(context=self._context())  # raises SMTPNotSupportedError: never fall back
                smtp.ehlo()
            if self.user:
                smtp.login(self.user, self._password or "")
        except smtplib.SMTPAuthenticationError as exc:
            self._abandon(smtp)  # the server's words only; the password is in no message
            self.auth_refused = True  # (MemberMail asks the Vault again: the password may have changed)
            raise MailDeferred(f"SMTP AUTH as {self.user!r} refused: {_reply(exc.smtp_code, exc.smtp_error)}",
                               connection=True) from None
        except smtplib.SMTPResponseException as exc:
            self._abandon(smtp)
            raise MailDeferred(f"SMTP {self.host}:{self.port}: {_reply(exc.smtp_code, exc.smtp_error)}",
                               connection=True) from None
        except (OSError, smtplib.SMTPException) as exc:
            self._abandon(smtp)
            raise MailDeferred(f"SMTP {self.host}:{self.port}: {type(exc).__name__}: {exc}", connection=True) from None
        self._smtp = smtp
        self.auth_refused = False
        log.debug("connected to %r", self)

    def send(self, sender: str, recipient: str, message: bytes, before_data=lambda: None) -> str:
        """One transaction; returns the server's reply to DATA. ``before_data()`` runs once MAIL
        and RCPT are accepted, just before DATA. Raises MailDeferred, MailRejected or
        MailInterrupted; after MailDeferred(connection=True) and MailInterrupted the connection
        is closed."""
        self.connect()
        smtp = self._smtp
        try:
            code, text = smtp.mail(sender)
            if code != 250:  # about our sender, not this message: every message would get it
                error = self._refused(code, text, "MAIL FROM")
                raise MailDeferred(f"{error} (the sender {sender!r}: check from and smtp_user)", connection=True)
            code, text = smtp.rcpt(recipient)
            if code not in (250, 251):
                raise self._refused(code, text, "RCPT TO")
        except MailError:
            raise
        except (OSError, smtplib.SMTPException) as exc:  # lost before DATA: the server has nothing
            self.close()
            raise MailDeferred(f"connection lost before DATA: {type(exc).__name__}: {exc}", connection=True) from None
        before_data()
        try:
            code, text = smtp.data(message)
        except smtplib.SMTPDataError as exc:  # the server answered DATA, and not 354: it has nothing
            raise self._refused(exc.smtp_code, exc.smtp_error, "DATA") from None
        except (OSError, smtplib.SMTPException) as exc:
            self.close()
            raise MailInterrupted(f"connection lost during DATA: {type(exc).__name__}: {exc}") from None
        if code != 250:  # (smtplib raises only for the reply to DATA itself, not for the one after the message)
            raise self._refused(code, text, "end of DATA")
        return _reply(code, text)

    def _refused(self, code, text, stage) -> MailError:
        error = _classify(code, text, stage)
        if code == 421:  # the server is closing the connection
            self.close()
            error.connection = True
        else:
            self._reset()
        return error

    def _reset(self):
        try:
            self._smtp.rset()
        except (OSError, smtplib.SMTPException):
            self.close()

    def close(self) -> None:
        """Say QUIT if the connection is still there; idempotent."""
        smtp, self._smtp = self._smtp, None
        self._abandon(smtp, polite=True)

    @staticmethod
    def _abandon(smtp, polite=False):
        if smtp is None:
            return
        try:
            if polite:
                smtp.quit()
        except (OSError, smtplib.SMTPException):
            pass
        finally:
            smtp.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
