"""Mail templates: one text and one HTML template per kind, rendered with bottle's SimpleTemplate.

Files are ``templates/KIND.txt.tpl`` and ``templates/KIND.html.tpl`` (HTML ones rebase on
``layout.html.tpl``). The text template's first line is ``Subject: ...``, then a blank line,
then the body: subject and body come from the same data.

Escaping: HTML templates escape every ``{{value}}`` (SimpleTemplate's default; ``{{!value}}``
is raw, used only for the layout's ``base``), so a member's name cannot inject markup. Text
templates are compiled with ``noescape=True``: plain text is not HTML.

Every template is compiled and rendered with :data:`SAMPLES` by :func:`check_templates` at
start-up: a syntax error, a name the template uses that its kind does not provide, or a
missing file raises :class:`TemplateError` (a ``ConfigError``) naming the file, before
anything is sent.

The context of each kind is what :data:`SAMPLES` shows; every kind also gets ``space``,
``kind``, ``opt_out`` (whether the member can turn this kind off) and the helpers ``cad(cents)``
and ``btc(sats)``: money stays integer until it is printed.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
from pathlib import Path

import bottle

from proto.errors import ConfigError

from .models import DEFAULTS, KINDS, OPT_OUT_KINDS

log = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).with_name("templates")
QR_CID = "qr"  # Content-ID of the welcome mail's inline QR image (HTML: src="cid:qr")

_ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
_URI = f"bitcoin:{_ADDRESS}?amount=0.00062000&label=DCTRL%20dues%20alice"

# Sample data per kind: the contract of what each template may use, and what
# check_templates() renders every template with.
SAMPLES: dict[str, dict] = {
    "welcome": {"name": "Alice Example", "handle": "alice", "plan": "regular", "dues_cents": 4000,
                "period": "month", "address": _ADDRESS, "uri": _URI},
    "receipt": {"name": "Alice Example", "handle": "alice", "sats": 62_000, "cad_cents": 4000,
                "rate": "64516.13", "txid": "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b",
                "vout": 0, "paid_through": "2027-01-31", "method": "bitcoin"},
    "reminder": {"name": "Alice Example", "handle": "alice", "days": 7, "due_date": "2027-01-31",
                 "dues_cents": 4000, "address": _ADDRESS, "uri": _URI},
    "overdue": {"name": "Alice Example", "handle": "alice", "due_date": "2027-01-31", "balance_cents": 4000,
                "address": _ADDRESS, "uri": _URI},
    "lapsed": {"name": "Alice Example", "handle": "alice", "since": "2027-03-02", "address": _ADDRESS},
    "reinstated": {"name": "Alice Example", "handle": "alice", "paid_through": "2027-04-30"},
    "statement": {"name": "Alice Example", "handle": "alice", "month": "2027-01", "balance_cents": 0,
                  "status": "current", "paid_through": "2027-01-31",
                  "lines": [{"date": "2027-01-01", "what": "dues, regular plan", "cad_cents": -4000},
                            {"date": "2027-01-03", "what": "payment 4a5e1e4b:0", "cad_cents": 4000}]},
    "payout": {"name": "Alice Example", "handle": "alice", "payout": 12, "payout_kind": "refund", "sats": 125_000,
               "cad_cents": 16_250, "destination": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4",
               "reason": "refund of invoice 41 (overpaid)", "requested_by": "bob",
               "requested_at": "2027-01-15 12:00 UTC", "expires_at": "2027-01-18 12:00 UTC", "fee": 1_410,
               "txid": "4a5e1e4baab89f3a32518a88c31bc87f618f76673e2cc77ab2127b7afdeda33b", "replaces": None,
               "needed": 2, "signers": 0},
    "test": {"handle": ""},
}
assert set(SAMPLES) == set(KINDS)

# Other shapes of the same kinds that occur today, rendered at start-up too: a welcome before
# dues addresses exist (no address), a receipt for a cash or e-transfer payment (no sats, rate,
# txid; no paid-through date until the Reporter computes one).
VARIANTS: dict[str, list[dict]] = {
    "welcome": [{**SAMPLES["welcome"], "address": None, "uri": None}],
    "receipt": [{**SAMPLES["receipt"], "sats": None, "rate": None, "txid": None, "vout": None,
                 "paid_through": None, "method": "cash"}],
    # a member without a dues address (no [members] receive): pay at the space
    "reminder": [{**SAMPLES["reminder"], "address": None, "uri": None, "days": 1}],
    "overdue": [{**SAMPLES["overdue"], "address": None, "uri": None}],
    "lapsed": [{**SAMPLES["lapsed"], "address": None}],
    "statement": [{**SAMPLES["statement"], "lines": []}],
    # a bump's replacement (one signature in already), and one found by the catch-up (the number
    # needed not known) requested in sats (no CAD value)
    "payout": [{**SAMPLES["payout"], "replaces": 11, "signers": 1},
               {**SAMPLES["payout"], "needed": None, "cad_cents": None, "fee": None, "txid": None,
                "expires_at": None}],
}


class TemplateError(ConfigError):
    """A template is missing, does not compile, or fails to render its kind's sample data."""

    code = "bad_template"


@dataclasses.dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str
    qr: str | None  # the text to show as an inline QR image (welcome: the bitcoin: URI)


def cad(cents: int) -> str:
    """Integer cents as ``40.00`` (``-10.00``)."""
    sign = "-" if cents < 0 else ""
    return f"{sign}{abs(cents) // 100}.{abs(cents) % 100:02d}"


def btc(sats: int) -> str:
    sign = "-" if sats < 0 else ""
    return f"{sign}{abs(sats) // 100_000_000}.{abs(sats) % 100_000_000:08d}"


def qr_png(text: str) -> bytes:
    """A PNG of ``text`` as a QR code (segno: pure Python, no Pillow), 4 px a module."""
    import segno

    out = io.BytesIO()
    segno.make(text, error="m").save(out, kind="png", scale=4, border=2)
    return out.getvalue()


class Templates:
    """The compiled templates of one directory (``config["templates_dir"]``, or the package's)."""

    def __init__(self, directory: str | os.PathLike | None = None, space: str = DEFAULTS["space_name"]):
        self.directory = Path(directory) if directory else PACKAGE_DIR
        self.space = space
        self._compiled: dict[str, bottle.SimpleTemplate] = {}

    def _template(self, kind: str, fmt: str) -> bottle.SimpleTemplate:
        name = f"{kind}.{fmt}.tpl"
        tpl = self._compiled.get(name)
        if tpl is None:
            path = self.directory / name
            try:
                source = path.read_text(encoding="utf-8")
            except OSError as exc:
                raise TemplateError(f"mail template {path}: {exc.strerror or exc}") from None
            try:
                tpl = bottle.SimpleTemplate(source=source, lookup=[str(self.directory)], noescape=(fmt == "txt"))
                tpl.co  # compile now: a syntax error is found here, not at the first mail
            except Exception as exc:
                raise TemplateError(f"mail template {path}: {type(exc).__name__}: {exc}") from None
            self._compiled[name] = tpl
        return tpl

    def render(self, kind: str, context: dict) -> Rendered:
        """Render ``kind`` with ``context`` (its :data:`SAMPLES` keys); raises TemplateError."""
        if kind not in SAMPLES:
            raise TemplateError(f"no mail kind {kind!r}; kinds: {', '.join(KINDS)}")
        env = {**context, "space": self.space, "kind": kind, "opt_out": kind in OPT_OUT_KINDS,
               "cad": cad, "btc": btc, "qr_cid": QR_CID}
        out = {}
        for fmt in ("txt", "html"):
            try:
                out[fmt] = self._template(kind, fmt).render(**env)
            except TemplateError:
                raise
            except Exception as exc:  # NameError, KeyError, TypeError... from the template's code
                raise TemplateError(f"mail template {self.directory / f'{kind}.{fmt}.tpl'}: "
                                    f"{type(exc).__name__}: {exc}") from None
        first, _, body = out["txt"].partition("\n")
        if not first.startswith("Subject:"):
            raise TemplateError(f"mail template {self.directory / f'{kind}.txt.tpl'}: "
                                "the first line must be 'Subject: ...'")
        subject = " ".join(first[len("Subject:"):].split())  # one line, whatever a name holds
        return Rendered(subject=subject, text=body.lstrip("\n"), html=out["html"],
                        qr=context.get("uri") if kind == "welcome" else None)

    def check(self) -> int:
        """Render every kind in both formats with its sample data; raises TemplateError on the
        first that fails. Returns how many templates were rendered."""
        n = 0
        for kind in KINDS:
            for sample in (SAMPLES[kind], *VARIANTS.get(kind, ())):
                rendered = self.render(kind, sample)
                if rendered.qr:
                    qr_png(rendered.qr)
                n += 2
        return n


def check_templates(directory: str | os.PathLike | None = None, space: str = DEFAULTS["space_name"]) -> Templates:
    """Start-up check: every template of ``directory`` (default: the package's) rendered with
    sample data. Returns the compiled :class:`Templates`; raises :class:`TemplateError`."""
    templates = Templates(directory, space)
    n = templates.check()
    log.info("mail templates: %d rendered with sample data from %s", n, templates.directory)
    return templates
