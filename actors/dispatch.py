"""Which handler gets which message: shared by the Runtime and the test kit's FakeRuntime.

A runtime hosts one or more *parts* (an actor, or the agent's MachineNotifier,
MachineMgr and simulator control socket): every part's ``@on`` handlers and
``@every`` jobs are collected, and a message goes to every handler (of every
part, in the order of the parts) whose prefix it falls under.

A handler the runtime cannot serve is an error at start, never silently
dropped (:class:`HandlerError`):

* an object held by a hosted part that has ``@on``/``@every`` handlers of its
  own but is not hosted itself (the agent's old hand-written runner hid its
  parts' handlers this way);
* an ``@on`` prefix (not ``raw``) under which no topic family of the schema
  registry falls: no message on it could ever be accepted.
"""

from __future__ import annotations

from proto import wire
from proto.errors import DctrlError


class HandlerError(DctrlError):
    """A handler the runtime cannot serve (see the module doc)."""

    code = "handler_error"


def marked(obj) -> list[tuple[str, object]]:
    """(attribute, function) of every ``@on``/``@every`` method of ``obj``'s class."""
    out = []
    seen = set()
    for klass in type(obj).__mro__:
        for attr, fn in vars(klass).items():
            if attr in seen:
                continue
            seen.add(attr)
            if hasattr(fn, "_dctrl_on") or hasattr(fn, "_dctrl_every"):
                out.append((attr, fn))
    return sorted(out)


def servable(prefix: str, schemas) -> bool:
    """Whether some topic family of ``schemas`` has topics under ``prefix`` (whole segments)."""
    if prefix in ("", "."):
        return True
    parts = prefix.strip(".").split(".")
    for family, _ in schemas.families():
        fam = family.split(".")
        if all(f == "*" or f == p for f, p in zip(fam, parts)):
            return True
    return False


def check_prefix(prefix: str, schemas, where: str) -> None:
    if not servable(prefix, schemas):
        raise HandlerError(f"{where}: @on({prefix!r}) can never be called: no topic family in the schema "
                           "registry (proto/topics.py) falls under it")


class Handlers:
    """The handlers and jobs of a runtime's parts."""

    def __init__(self, parts, schemas):
        self.parts = list(parts)
        self.schemas = schemas
        self.on: list[tuple[bytes, object, bool, bool]] = []   # (prefix frame, bound fn, blocking, raw)
        self.every: list[tuple[float, object]] = []            # (seconds, bound fn)
        hosted = {id(p) for p in self.parts}
        for part in self.parts:
            name = type(part).__name__
            for attr, fn in marked(part):
                bound = getattr(part, attr)
                if hasattr(fn, "_dctrl_on"):
                    prefix, blocking, raw = fn._dctrl_on
                    if not raw:
                        check_prefix(prefix, schemas, f"{name}.{attr}")
                    self.on.append((wire.prefix_frame(prefix), bound, blocking, raw))
                if hasattr(fn, "_dctrl_every"):
                    self.every.append((fn._dctrl_every, bound))
            for attr, value in list(vars(part).items()):
                if attr == "runtime" or id(value) in hosted or isinstance(value, type):
                    continue
                inner = marked(value)
                if inner:
                    raise HandlerError(
                        f"{name}.{attr} ({type(value).__name__}) has handlers "
                        f"({', '.join(a for a, _ in inner)}) but is not a part of this runtime: they would "
                        "never run; host it as a part (Runtime([...parts], settings))")

    def add(self, prefix: str, fn, blocking=False, raw=False) -> bytes:
        if not raw:
            check_prefix(prefix, self.schemas, getattr(fn, "__qualname__", repr(fn)))
        frame = wire.prefix_frame(prefix)
        self.on.append((frame, fn, blocking, raw))
        return frame

    def outside(self, subscribe) -> list[tuple[bytes, object]]:
        """The (prefix, fn) of handlers (not ``raw``) no message could reach under the subscribe
        grants ``subscribe`` (topic frame prefixes): the broker narrows every subscription to them."""
        return [(p, fn) for p, fn, _, raw in self.on
                if not raw and not any(g.startswith(p) or p.startswith(g) for g in subscribe)]

    def prefixes(self) -> set[bytes]:
        return {h[0] for h in self.on}

    def matching(self, topic: bytes):
        return [h for h in self.on if topic.startswith(h[0])]


def combined_health(results) -> tuple[str, str | None]:
    """One heartbeat status for several parts: degraded if one is, else starting if one is."""
    statuses = [s for s, _ in results]
    status = "degraded" if "degraded" in statuses else "starting" if "starting" in statuses else "ok"
    detail = "; ".join(d for _, d in results if d)
    return status, (detail[:512] or None)
