"""The report server's WSGI application (:func:`make_app`).

Every request passes :class:`Guard` first: a method other than GET or HEAD is answered 405 (with
``Allow: GET, HEAD``) before any routing; every answer carries the security headers and is logged
(method, path, status, milliseconds, the token's name; never a token or a query's values).

Routes ask for a scope with :meth:`Server.need`: no token, or a wrong, expired or revoked one, is
401; a token without the scope is 403; neither body holds any data. A token comes as
``Authorization: Bearer TOKEN`` or as the ``dctrl_token`` cookie (set by the login page).
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from dataclasses import dataclass, field

import bottle
import peewee

from actors.server.tokens import SCOPES, TokenRecord, TokenStore

log = logging.getLogger("dctrl.server")

COOKIE = "dctrl_token"
ALLOWED = ("GET", "HEAD")
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    # Everything is served from here (no CDN); the SVG charts carry their own styles.
    ("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
                                "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
]
_WHOLE = re.compile(r"-?[0-9]{1,12}")
bottle.BaseRequest.MEMFILE_MAX = 0  # no request bodies: GET and HEAD only


@dataclass
class Server:
    """What every route needs: the home, the read-only database, the tokens and the clock."""

    home: object
    database: object
    tokens: TokenStore
    clock: object = time.time
    config: dict = field(default_factory=dict)  # [server] of config.toml
    _heartbeats: object = field(default=None, repr=False)
    _recent: "Recent" = field(default=None, repr=False)

    def recent(self, key, seconds: float, compute):
        """``compute()``, or what it gave for ``key`` less than ``seconds`` ago (:class:`Recent`)."""
        if self._recent is None:
            self._recent = Recent(time.monotonic)
        return self._recent.get(key, seconds, compute)

    def heartbeats(self):
        """The event log's last heartbeat of every sender, kept for the server's life with the
        position read to (actors/server/events.py): each request reads only what is new."""
        if self._heartbeats is None:
            from actors.server.events import Heartbeats

            self._heartbeats = Heartbeats(self.home.events_dir)
        return self._heartbeats

    # -- access ----------------------------------------------------------------------------------

    def token(self) -> TokenRecord | None:
        """The request's valid token, or None (and why, in the environ for the access log)."""
        cached = bottle.request.environ.get("dctrl.token", False)
        if cached is not False:
            return cached
        header = bottle.request.get_header("Authorization", "")
        given = header[7:].strip() if header[:7].lower() == "bearer " else None
        if given is None:
            given = bottle.request.get_cookie(COOKIE)
        record, why = self.tokens.check(given)
        bottle.request.environ["dctrl.token"] = record
        bottle.request.environ["dctrl.auth"] = record.name if record else why
        return record

    def need(self, scope: str) -> TokenRecord:
        """The request's token if it has ``scope``; else abort with 401 or 403 (no data)."""
        assert scope in SCOPES, scope
        record = self.token()
        if record is None:
            raise bottle.HTTPError(401, "a valid token is needed (Authorization: Bearer TOKEN)",
                                   **{"WWW-Authenticate": 'Bearer realm="dctrl"'})
        if scope not in record.scopes:
            raise bottle.HTTPError(403, f"this token has no {scope} scope")
        return record

    def read(self, fn, *args, **kwargs):
        """``fn(database, *args, **kwargs)``; a table not there yet (its actor has not started on
        this database) is 503 with that reason, any other database error 500, logged once."""
        try:
            return fn(self.database, *args, **kwargs)
        except (peewee.OperationalError, peewee.ProgrammingError) as exc:
            text = str(exc)
            if "no such table" in text or "does not exist" in text:
                log.warning("%s %s: %s", bottle.request.method, bottle.request.path, text.splitlines()[0])
                raise bottle.HTTPError(503, "not ready: a table is missing (has every actor started once on "
                                            "this database?)") from None
            raise

    # -- parameters ------------------------------------------------------------------------------

    def int_param(self, name: str, default: int, lo: int, hi: int) -> int:
        """A whole-number query parameter within [lo, hi]; 400 with the reason otherwise."""
        text = bottle.request.query.get(name)
        if text is None or text == "":
            return default
        if not _WHOLE.fullmatch(text):  # ("--5" passed a lstrip("-").isdigit() test, then int() failed: 500)
            raise bottle.HTTPError(400, f"{name} must be a whole number from {lo} to {hi}")
        value = int(text)
        if not lo <= value <= hi:
            raise bottle.HTTPError(400, f"{name} must be a whole number from {lo} to {hi}")
        return value

    def str_param(self, name: str, default: str | None = None, max_len: int = 200) -> str | None:
        text = bottle.request.query.get(name)
        if text is None or text == "":
            return default
        if len(text) > max_len or any(ord(c) < 32 for c in text):
            raise bottle.HTTPError(400, f"{name}: at most {max_len} printable characters")
        return text


class Recent:
    """Answers kept a second or two (the dashboard, the public reports): a page asked by many
    clients at once is computed once per period, by one thread. When the period is over, the
    thread that finds it so computes the answer again while the others are given the previous
    one (stale while it is renewed); only when there is none yet do they wait for it. What it
    shows is at most a period and one computation old; a key holds everything the answer
    depends on besides the data (the path, the query, the token's scopes)."""

    def __init__(self, clock, size: int = 64):
        self.clock, self.size = clock, size
        self.lock = threading.Lock()
        self.items: dict = {}  # key -> (time computed, value)
        self.computing: dict = {}  # key -> lock held by the thread computing it

    def get(self, key, seconds: float, compute):
        while True:
            with self.lock:
                item = self.items.get(key)
                if item is not None and self.clock() - item[0] < seconds:
                    return item[1]
                busy = self.computing.get(key)
                if busy is None:
                    busy = self.computing[key] = threading.Lock()
                    busy.acquire()
                    break
                if item is not None:
                    return item[1]  # being renewed by another thread: the previous answer meanwhile
            with busy:  # the first answer, computed by another thread: wait for it, then look again
                pass
        try:
            value = compute()
            with self.lock:
                if key not in self.items and len(self.items) >= self.size:
                    self.items.pop(next(iter(self.items)))
                self.items[key] = (self.clock(), value)
            return value
        finally:
            with self.lock:
                del self.computing[key]
            busy.release()


def json_response(data, status: int = 200):
    bottle.response.status = status
    bottle.response.content_type = "application/json"
    return json.dumps(data, sort_keys=True, default=str)


def _error_page(err: bottle.HTTPError):
    """Errors say what went wrong and hold nothing else: JSON for the API, a plain page elsewhere."""
    # (503 is ours, a fixed sentence: Server.read's missing table; any other 5xx says nothing)
    said = err.status_code < 500 or (err.status_code == 503 and err.exception is None)
    reason = err.body if isinstance(err.body, str) and said else "internal error"
    if err.status_code >= 500 and not said:
        # (bottle has written the traceback to wsgi.errors, waitress's log)
        log.error("%s %s: %s", bottle.request.method, bottle.request.path, err.exception or err.body)
    if bottle.request.path.startswith("/api/") or bottle.request.path.endswith(".json"):
        bottle.response.content_type = "application/json"
        return json.dumps({"error": reason, "status": err.status_code})
    bottle.response.content_type = "text/html; charset=utf-8"
    return (f"<!doctype html><title>{err.status_code}</title><h1>{err.status_code}</h1>"
            f"<p>{bottle.html_escape(reason)}</p><p><a href=\"/\">dashboard</a></p>")


class Guard:
    """The WSGI layer around the bottle app: methods, security headers, the access log."""

    def __init__(self, app, clock=time.monotonic):
        self.app = app
        self.clock = clock

    def __call__(self, environ, start_response):
        start_at = self.clock()
        method = environ.get("REQUEST_METHOD", "")
        seen = {}

        def start(status, headers, exc_info=None):
            seen["status"] = status.split(" ", 1)[0]
            return start_response(status, headers + SECURITY_HEADERS, exc_info)

        if method not in ALLOWED:
            body = json.dumps({"error": f"method {method[:16]} not allowed: the report server is read-only",
                               "status": 405}).encode()
            start("405 Method Not Allowed", [("Allow", ", ".join(ALLOWED)), ("Content-Type", "application/json"),
                                             ("Content-Length", str(len(body)))])
            out = [body]
        else:
            out = self.app(environ, start)
        log.info("%s %s %s %.1f ms (%s)", method[:16], environ.get("PATH_INFO", "")[:200], seen.get("status"),
                 (self.clock() - start_at) * 1000, environ.get("dctrl.auth", "-"))
        return out


# Every component's models go through a peewee DatabaseProxy that its queries rebind for a moment
# (``database.bind_ctx(MODELS)``), restoring what was there before on the way out. From waitress's
# threads at once, one request's exit could restore the uninitialized proxy under another's query
# (a 500: "Cannot use uninitialized Proxy"). With every proxy pointing at the server's database
# (one object; peewee keeps a connection per thread), whatever is restored is that database.
PROXIES = ("actors.member_data.models", "actors.member_mail.models", "actors.business_mgr.models",
           "actors.business_data.models", "actors.reporter.models", "actors.payout_mgr.models",
           "actors.payout_mgr.ledger", "actors.chain_notifier.models")


def bind_models(database) -> None:
    import importlib

    for name in PROXIES:
        importlib.import_module(name).db.initialize(database)


def make_app(home, *, database=None, tokens: TokenStore | None = None, clock=time.time):
    """The WSGI application for ``home``; ``database``: an open (read-only) database, by default
    :func:`actors.server.database.open_read_only` of the home's."""
    from actors.server import api, pages, spaceapi
    from actors.server.database import open_read_only

    database = database or open_read_only(home.database_url)
    bind_models(database)
    server = Server(home=home, database=database,
                    tokens=tokens or TokenStore(home.server_tokens_path, clock), clock=clock,
                    config=home.config.get("server", {}))
    app = bottle.Bottle()
    app.config["json.enable"] = False  # (Bottle(autojson=False) is deprecated in 0.13)
    app.default_error_handler = _error_page
    app.config["dctrl.server"] = server
    api.install(app, server)
    pages.install(app, server)
    spaceapi.install(app, server)
    return Guard(app)
