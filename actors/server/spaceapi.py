"""SpaceAPI (v15) at ``/spaceapi.json``: open to everyone, aggregates only.

The document (https://spaceapi.io, schema 15) is the static fields of ``[spaceapi]`` in
config.toml and three live ones:

- ``state.open`` and ``state.lastchange``: from the latest ``machine.NAME.door`` event
  (``{"open": bool}``, published by the agent at its start and on every debounced change) of the
  machine named by ``door_machine``, read from the event log; ``lastchange`` is when the event
  that brought the current state was logged (Unix seconds). With no such event in the log, or no
  log, ``state`` has no ``open``: v15's "temporarily unknown". Without ``door_machine`` there is
  no live state (the static ``state`` table, if any, is passed through).
- ``sensors.total_member_count``: the members active today (prepaid, current, due, overdue:
  :data:`actors.reporter.dues.ACTIVE`), from the members report
  (:func:`actors.reporter.reports.member_counts`), computed at most once a minute
  (``member_count = false`` leaves it out).

No token is needed (it holds no names, only counts), and the answer carries
``Access-Control-Allow-Origin: *`` (SpaceAPI directories and dashboards fetch it from browsers)
and ``Cache-Control: max-age=60``. Without a ``[spaceapi]`` table (or an empty one) it answers 404.

``[spaceapi]`` is checked when the app is made (``dctrl serve`` refuses to start on a bad one,
with a ConfigError naming the key): ``space``, ``logo``, ``url`` (strings) and ``contact`` (a
table: ``email``, ``irc``, ``mastodon``, ``matrix``, ``phone``, ...) are required, as in v15;
``location`` (``address``, ``lat``, ``lon`` (both or neither), ``timezone``, ``country_code``,
``hint``, ``areas``), ``projects`` (strings), ``links`` (tables with ``name`` and ``url``) and
every other v15 field (``spacefed``, ``cam``, ``state``, ``events``, ``sensors``, ``feeds``,
``membership_plans``, ``linked_spaces``) and ``ext_*`` extensions are passed through as given,
after a check of their type. Anything else is refused (a typo would otherwise vanish silently).

Finding the door's state never scans the whole log per request: the first request reads the
segments from the last one back until it has the latest state and the event that brought it,
and remembers where the log ended (its segment and byte offset); each later request reads only
the records appended since.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from datetime import datetime, timezone

import bottle

from actors.server.app import Server
from proto.errors import ConfigError

log = logging.getLogger("dctrl.server")

API_COMPATIBILITY = ["15"]
MAX_AGE = 60  # seconds: the Cache-Control of the answer and how long the member count is kept
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")  # a machine's name (proto.wire.NAME_RE)
NUMBER = (int, float)

# v15's top-level fields a config may give, with the type of each ("ext_*" as well)
STATIC = {"space": str, "logo": str, "url": str, "contact": dict, "location": dict, "spacefed": dict,
          "cam": list, "state": dict, "events": list, "sensors": dict, "feeds": dict, "projects": list,
          "links": list, "membership_plans": list, "linked_spaces": list}
OURS = {"door_machine": str, "member_count": bool}
REQUIRED = ("space", "logo", "url", "contact")
LOCATION = {"address": str, "lat": NUMBER, "lon": NUMBER, "timezone": str, "country_code": str, "hint": str,
            "areas": list}
TYPE_NAMES = {str: "a string", dict: "a table", list: "an array", bool: "true or false", NUMBER: "a number"}


def _is(value, kind) -> bool:
    if kind is NUMBER:
        return isinstance(value, NUMBER) and not isinstance(value, bool)
    return isinstance(value, kind)


def check_config(config) -> dict:
    """``[spaceapi]`` checked; returns it. Raises ConfigError naming the key."""
    where = "config.toml [spaceapi]"
    if not isinstance(config, dict):
        raise ConfigError(f"{where} must be a table")
    for key, value in config.items():
        kind = STATIC.get(key) or OURS.get(key)
        if kind is None:
            if key.startswith("ext_"):
                continue
            if key == "api_compatibility":
                raise ConfigError(f"{where} api_compatibility: set by the server ({API_COMPATIBILITY}), "
                                  "not in the config")
            raise ConfigError(f"{where}: unknown key {key!r} (SpaceAPI v15 fields: {', '.join(sorted(STATIC))}; "
                              f"ours: {', '.join(sorted(OURS))}; extensions: ext_*)")
        if not _is(value, kind):
            raise ConfigError(f"{where} {key} must be {TYPE_NAMES[kind]}, not {value!r}")
    for key in REQUIRED:
        if key not in config:
            raise ConfigError(f"{where}: {key} is required (SpaceAPI v15 requires space, logo, url and contact)")
        if key != "contact" and not config[key].strip():
            raise ConfigError(f"{where} {key} must not be empty")
    contact = config["contact"]
    if not contact:
        raise ConfigError(f"{where} contact: give at least one way to reach the space (email, irc, mastodon, "
                          "matrix, phone, ...)")
    for key, value in contact.items():
        if key == "keymasters":
            if not isinstance(value, list) or not value or not all(isinstance(k, dict) for k in value):
                raise ConfigError(f"{where} contact.keymasters must be a non-empty array of tables")
        elif not isinstance(value, str):
            raise ConfigError(f"{where} contact.{key} must be a string, not {value!r}")
    location = config.get("location")
    if location is not None:
        if not location:
            raise ConfigError(f"{where} location: give at least one of {', '.join(LOCATION)} (or leave it out)")
        for key, value in location.items():
            kind = LOCATION.get(key)
            if kind is None:
                raise ConfigError(f"{where} location: unknown key {key!r} (known: {', '.join(LOCATION)})")
            if not _is(value, kind):
                raise ConfigError(f"{where} location.{key} must be {TYPE_NAMES[kind]}, not {value!r}")
        if ("lat" in location) != ("lon" in location):
            raise ConfigError(f"{where} location: give lat and lon together")
        if "lat" in location and not (-90 <= location["lat"] <= 90 and -180 <= location["lon"] <= 180):
            raise ConfigError(f"{where} location: lat from -90 to 90, lon from -180 to 180")
    for i, p in enumerate(config.get("projects", ())):
        if not isinstance(p, str):
            raise ConfigError(f"{where} projects[{i}] must be a string (a URL), not {p!r}")
    for i, link in enumerate(config.get("links", ())):
        if not isinstance(link, dict) or not isinstance(link.get("name"), str) or not isinstance(link.get("url"), str):
            raise ConfigError(f"{where} links[{i}] must be a table with name and url (strings), not {link!r}")
    if "total_member_count" in config.get("sensors", {}) and config.get("member_count", True):
        raise ConfigError(f"{where} sensors.total_member_count is counted by the server: leave it out, or set "
                          "member_count = false")
    state = config.get("state", {})
    if config.get("door_machine") is not None:
        if not NAME_RE.match(config["door_machine"]):
            raise ConfigError(f"{where} door_machine {config['door_machine']!r}: a machine's name (lowercase "
                              "letter first, then up to 31 of a-z 0-9 _ -)")
        for key in ("open", "lastchange"):
            if key in state:
                raise ConfigError(f"{where} state.{key} comes from the door of {config['door_machine']}: leave "
                                  "it out")
    elif "lastchange" in state or ("open" in state and not isinstance(state["open"], bool)):
        raise ConfigError(f"{where} state: without door_machine only a fixed open (true or false), message "
                          "and icon")
    return config


# -- the door ----------------------------------------------------------------------------------


class DoorState:
    """The latest ``machine.NAME.door`` of one machine in the event log, kept up to date by
    reading only what was appended since the last look (thread-safe)."""

    def __init__(self, directory, machine: str):
        self.directory = str(directory)
        self.machine = machine
        self.topic = f"machine.{machine}.door.".encode()
        self.open: bool | None = None
        self.lastchange: int | None = None  # when the current state was first logged, Unix seconds
        self._follower = None
        self._lock = threading.Lock()

    def current(self) -> tuple[bool | None, int | None]:
        with self._lock:
            try:
                self._refresh()
            except Exception as exc:  # a log being pruned or a bad segment: the last state known
                log.warning("spaceapi: reading the event log %s: %s", self.directory, exc)
                self._follower = None
            return self.open, self.lastchange

    def _door(self, body: bytes) -> tuple[bool, int] | None:
        """(open, logged seconds) of a record if it is an accepted door event of our machine."""
        if self.topic not in body:  # (cheap: most records are not)
            return None
        from proto import wire

        try:
            logged, topic, envelope, code, _reason = wire.unpack(body)[:5]
            if code is not None or topic != self.topic:
                return None
            msg = wire.decode([topic, envelope])
        except Exception:
            return None
        is_open = msg.body.get("open") if isinstance(msg.body, dict) else None
        if msg.sender != self.machine or not isinstance(is_open, bool):
            return None
        return is_open, int(logged) // 1000

    def _apply(self, is_open: bool, at: int) -> None:
        if is_open != self.open:
            self.open, self.lastchange = is_open, at

    def _refresh(self) -> None:
        from actors import eventlog

        if self._follower is None:
            self._first_look(eventlog)
            return
        for _seq, body in self._follower.run(0, lambda: True):
            door = self._door(body)
            if door is not None:
                self._apply(*door)

    def _first_look(self, eventlog) -> None:
        """From the last segment back until the latest state's first event is found (an earlier
        event with the other state, or the start of the log); then follow from the end."""
        try:
            segments = eventlog._list_segments(self.directory)
        except FileNotFoundError:
            segments = []
        self.open = self.lastchange = None
        found: list[list[tuple[bool, int]]] = []
        end = segments[-1][0] if segments else 0
        for i in range(len(segments) - 1, -1, -1):
            base = segments[i][0]
            stop = segments[i + 1][0] if i + 1 < len(segments) else None
            events = []
            for seq, body in eventlog.read_records(self.directory, start_seq=base):
                if stop is not None and seq >= stop:
                    break
                if stop is None:
                    end = seq + 1
                door = self._door(body)
                if door is not None:
                    events.append(door)
            found.insert(0, events)
            flat = [e for seg in found for e in seg]
            if flat and any(e[0] != flat[-1][0] for e in flat):
                break
        for events in found:
            for door in events:
                self._apply(*door)
        follower = eventlog._Follower(self.directory, eventlog.DEFAULT_MAX_RECORD)
        follower.want = end  # the records from there on, at the next look
        self._follower = follower
        for _seq, body in follower.run(0, lambda: True):  # (anything appended while we looked)
            door = self._door(body)
            if door is not None:
                self._apply(*door)


# -- the document ------------------------------------------------------------------------------


class SpaceApi:
    def __init__(self, server: Server, config: dict):
        self.server = server
        self.config = config
        machine = config.get("door_machine")
        self.door = DoorState(server.home.events_dir, machine) if machine else None
        self._count: tuple[str, float, int | None] | None = None  # (day, when, count)
        self._lock = threading.Lock()

    def member_count(self) -> int | None:
        """Members active today, computed at most once every MAX_AGE seconds; None when the
        members' tables are not there yet."""
        from actors.reporter.dues import ACTIVE
        from actors.reporter.reports import member_counts

        now = self.server.clock()
        day = datetime.fromtimestamp(now, timezone.utc).date()
        with self._lock:
            cached = self._count
            if cached is not None and cached[0] == day.isoformat() and now - cached[1] < MAX_AGE:
                return cached[2]
            try:
                by_status = self.server.read(member_counts, day)
                count = sum(n for status, n in by_status.items() if status in ACTIVE)
            except bottle.HTTPError:  # (503: MemberData has not made its tables yet)
                count = None
            self._count = (day.isoformat(), now, count)
            return count

    def document(self) -> dict:
        c = self.config
        doc = {"api_compatibility": list(API_COMPATIBILITY)}
        for key, value in c.items():
            if key not in OURS:
                doc[key] = json.loads(json.dumps(value))  # (a copy: the config stays as read)
        if self.door is not None:
            is_open, lastchange = self.door.current()
            state = doc.setdefault("state", {})
            if is_open is not None:
                state["open"] = is_open
                state["lastchange"] = lastchange
        if c.get("member_count", True):
            count = self.member_count()
            if count is not None:
                doc.setdefault("sensors", {})["total_member_count"] = [
                    {"value": count, "name": "active members",
                     "description": "members whose dues are paid or within their grace (prepaid, current, due, "
                                    "overdue)"}]
        return doc


def install(app: bottle.Bottle, server: Server) -> None:
    config = server.home.config.get("spaceapi")  # (an empty table by default: not configured)
    api = SpaceApi(server, check_config(config)) if config else None

    @app.route("/spaceapi.json", "GET")
    def spaceapi():
        bottle.response.set_header("Access-Control-Allow-Origin", "*")
        if api is None:
            raise bottle.HTTPError(404, "no SpaceAPI here: [spaceapi] is not configured",
                                   **{"Access-Control-Allow-Origin": "*"})
        bottle.response.set_header("Cache-Control", f"public, max-age={MAX_AGE}")
        bottle.response.content_type = "application/json"
        return json.dumps(api.document(), sort_keys=True)

