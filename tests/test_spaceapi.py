"""The SpaceAPI (v15) at /spaceapi.json (actors/server/spaceapi.py), against a real server:
waitress serving the app in a thread, the door's events written to the home's event log as the
EventLogger writes them, members in MemberData's tables (SQLite and PostgreSQL)."""

from __future__ import annotations

import contextlib
import http.client
import json
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone

import msgpack
import nacl.signing
import pytest

from keys.home import Home
from proto import wire
from proto.errors import ConfigError
from tests.harness import ROOT, free_port, home_on

# The essentials of SpaceAPI v15 (https://schema.spaceapi.io/15.json, SpaceApi/schema 15.json):
# its required fields and the shapes of the fields this server fills in.
SCHEMA_V15 = {
    "$schema": "http://json-schema.org/draft-07/schema#",
    "type": "object",
    "required": ["api_compatibility", "space", "logo", "url", "contact"],
    "properties": {
        "api_compatibility": {"type": "array", "items": {"type": "string"}, "contains": {"const": "15"}},
        "space": {"type": "string"},
        "logo": {"type": "string"},
        "url": {"type": "string"},
        "location": {"type": "object", "minProperties": 1,
                     "properties": {"address": {"type": "string"}, "lat": {"type": "number"},
                                    "lon": {"type": "number"}, "timezone": {"type": "string"}},
                     "dependentRequired": {"lat": ["lon"], "lon": ["lat"]}},
        "state": {"type": "object",
                  "properties": {"open": {"type": "boolean"}, "lastchange": {"type": "number"},
                                 "message": {"type": "string"}}},
        "contact": {"type": "object",
                    "properties": {k: {"type": "string"} for k in ("email", "irc", "mastodon", "matrix", "phone")}},
        "sensors": {"type": "object", "properties": {"total_member_count": {
            "type": "array", "items": {"type": "object", "required": ["value"],
                                       "properties": {"value": {"type": "number"}, "name": {"type": "string"},
                                                      "description": {"type": "string"}}}}}},
        "projects": {"type": "array", "items": {"type": "string"}},
        "links": {"type": "array", "items": {"type": "object", "required": ["name", "url"],
                                             "properties": {"name": {"type": "string"}, "url": {"type": "string"}}}},
    },
}

CONFIG = """
[spaceapi]
space = "DCTRL"
logo = "https://dctrl.example.org/logo.png"
url = "https://dctrl.example.org/"
door_machine = "vm1"
projects = ["https://github.com/dctrl"]
links = [{name = "wiki", url = "https://wiki.dctrl.example.org/"}]
ext_dctrl = "hello"

[spaceapi.contact]
email = "info@dctrl.example.org"
irc = "ircs://irc.libera.chat/#dctrl"
matrix = "#dctrl:matrix.org"

[spaceapi.location]
address = "436 W Pender St, Vancouver, BC, Canada"
lat = 49.2833
lon = -123.1116
timezone = "America/Vancouver"

[spaceapi.state]
message = "open when the door is"
"""


def validate(doc):
    import jsonschema_rs

    errors = [e.message for e in jsonschema_rs.Draft7Validator(SCHEMA_V15).iter_errors(doc)]
    assert not errors, errors


class DoorLog:
    """The home's event log, written as the EventLogger writes it: [logged ms, topic frame,
    envelope, code, reason], msgpack."""

    def __init__(self, home: Home):
        from actors.eventlog import EventLog

        self.log = EventLog(home.events_dir, segment_bytes=4096)  # small segments: several in a test
        self.key = nacl.signing.SigningKey.generate()
        self.seq = 0

    def event(self, sender, topic, body, *, logged_ms=None, code=None):
        self.seq += 1
        frames = wire.seal(self.key, topic, wire.pack_payload(sender, 1, self.seq, b"tok", body))
        logged_ms = int(time.time() * 1000) if logged_ms is None else logged_ms
        self.log.append(msgpack.packb([logged_ms, frames[0], frames[1], code, None if code is None else "refused"],
                                      use_bin_type=True))
        self.log.flush(force=True)

    def noise(self, n):
        for i in range(n):
            self.event("vm1", "machine.vm1.button", {"slot": 1, "pressed_at": i})

    def close(self):
        self.log.close()


@contextlib.contextmanager
def serving(home: Home):
    import waitress

    from actors.server.app import make_app

    app = make_app(Home(home.root))
    port = free_port()
    server = waitress.create_server(app, host="127.0.0.1", port=port, threads=2, ident="dctrl")
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.close()
        thread.join(5)


def get(port, path="/spaceapi.json", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()
    finally:
        conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request, tmp_path):
    from actors.db import connect
    from scripts.bench.members import populate

    with home_on(request.param, tmp_path / "home", prefix="spaceapi") as h:
        with open(h.root / "config.toml", "a") as f:
            f.write(CONFIG)
        database = connect(h.database_url)
        try:
            populate(database, 60, years=6, start=datetime.now(timezone.utc).date().replace(day=1,
                     year=datetime.now(timezone.utc).year - 6))
        finally:
            database.close()
        yield Home(h.root)


def expected_active(home):
    from actors.db import connect
    from actors.reporter.dues import ACTIVE
    from actors.reporter.reports import member_rows

    database = connect(home.database_url)
    try:
        rows = member_rows(database, datetime.now(timezone.utc).date())
    finally:
        database.close()
    return sum(1 for r in rows if r["status"] in ACTIVE), len(rows)


def test_door_flips_state_and_members_counted(home):
    door = DoorLog(home)
    try:
        door.noise(50)
        with serving(home) as port:
            status, headers, body = get(port)  # no token
            assert status == 200, body
            assert headers["Access-Control-Allow-Origin"] == "*"
            assert "max-age=60" in headers["Cache-Control"]
            assert headers["Content-Type"].startswith("application/json")
            doc = json.loads(body)
            validate(doc)
            assert doc["api_compatibility"] == ["15"]
            assert doc["space"] == "DCTRL" and doc["contact"]["matrix"] == "#dctrl:matrix.org"
            assert doc["location"]["lat"] == 49.2833 and doc["ext_dctrl"] == "hello"
            assert "open" not in doc["state"] and "lastchange" not in doc["state"]  # no door event yet: unknown
            assert doc["state"]["message"] == "open when the door is"
            assert "door_machine" not in doc and "member_count" not in doc
            active, total = expected_active(home)
            assert 0 < active < total == 60  # (some of the 60 stopped paying: lapsed)
            assert doc["sensors"]["total_member_count"][0]["value"] == active

            t_open = int(time.time()) - 100
            door.event("vm1", "machine.vm1.door", {"open": True}, logged_ms=t_open * 1000)
            door.noise(20)
            doc = json.loads(get(port)[2])
            validate(doc)
            assert doc["state"]["open"] is True and doc["state"]["lastchange"] == t_open

            # the same state again (the agent's start) keeps lastchange; another machine's door,
            # a refused one and one claiming vm1 from another sender change nothing
            door.event("vm1", "machine.vm1.door", {"open": True}, logged_ms=(t_open + 10) * 1000)
            door.event("vm2", "machine.vm2.door", {"open": False})
            door.event("vm1", "machine.vm1.door", {"open": False}, code="bad_signature")
            door.event("vm2", "machine.vm1.door", {"open": False})
            doc = json.loads(get(port)[2])
            assert doc["state"]["open"] is True and doc["state"]["lastchange"] == t_open

            t_closed = t_open + 50
            door.event("vm1", "machine.vm1.door", {"open": False}, logged_ms=t_closed * 1000)
            doc = json.loads(get(port)[2])
            validate(doc)
            assert doc["state"]["open"] is False and doc["state"]["lastchange"] == t_closed
            door.noise(30)
            assert json.loads(get(port)[2])["state"] == {"open": False, "lastchange": t_closed,
                                                          "message": "open when the door is"}

            assert get(port, headers={"Authorization": "Bearer dctrl_00000000_nonsense"})[0] == 200
            assert get(port, "/spaceapi.json?x=1")[0] == 200
        # a new server finds the same state reading the log from its end, several segments back
        with serving(home) as port:
            doc = json.loads(get(port)[2])
            assert doc["state"]["open"] is False and doc["state"]["lastchange"] == t_closed
    finally:
        door.close()


def test_first_look_reads_back_only_as_far_as_needed(tmp_path):
    from actors.server.spaceapi import DoorState

    home = Home(init_home_path(tmp_path))
    door = DoorLog(home)
    try:
        door.event("vm1", "machine.vm1.door", {"open": True}, logged_ms=1_000_000)
        door.event("vm1", "machine.vm1.door", {"open": False}, logged_ms=2_000_000)
        door.noise(100)
        door.event("vm1", "machine.vm1.door", {"open": False}, logged_ms=3_000_000)  # (an agent restart)
        door.noise(100)
        state = DoorState(home.events_dir, "vm1")
        assert state.current() == (False, 2000)
        door.event("vm1", "machine.vm1.door", {"open": True}, logged_ms=4_000_000)
        assert state.current() == (True, 4000)
        assert DoorState(home.events_dir, "vm1").current() == (True, 4000)
        assert DoorState(home.events_dir, "vm9").current() == (None, None)
        assert DoorState(tmp_path / "no-log", "vm1").current() == (None, None)
    finally:
        door.close()


def init_home_path(tmp_path):
    from tests.harness import new_home

    return new_home(tmp_path / "home").root


def test_not_configured_is_404(tmp_path):
    home = Home(init_home_path(tmp_path))
    with serving(home) as port:
        status, headers, body = get(port)
    assert status == 404 and headers["Access-Control-Allow-Origin"] == "*"
    assert "not configured" in json.loads(body)["error"]


MINIMAL = {"space": "S", "logo": "https://s/l.png", "url": "https://s/", "contact": {"email": "a@s"}}


@pytest.mark.parametrize("change, words", [
    ({"space": None}, "space is required"),
    ({"contact": None}, "contact is required"),
    ({"contact": {}}, "contact: give at least one"),
    ({"contact": {"email": 3}}, "contact.email must be a string"),
    ({"logo": 5}, "logo must be a string"),
    ({"url": " "}, "url must not be empty"),
    ({"spcae": "x"}, "unknown key 'spcae'"),
    ({"api_compatibility": ["14"]}, "api_compatibility: set by the server"),
    ({"location": {"lat": 1.0}}, "lat and lon together"),
    ({"location": {"lat": 100.0, "lon": 1.0}}, "lat from -90 to 90"),
    ({"location": {"addres": "x"}}, "location: unknown key 'addres'"),
    ({"location": {"lat": "49", "lon": 1}}, "location.lat must be a number"),
    ({"door_machine": "VM 1"}, "door_machine 'VM 1'"),
    ({"door_machine": "vm1", "state": {"open": True}}, "state.open comes from the door of vm1"),
    ({"projects": ["https://x", 3]}, "projects[1] must be a string"),
    ({"links": [{"name": "wiki"}]}, "links[0] must be a table with name and url"),
    ({"sensors": {"total_member_count": [{"value": 3}]}}, "sensors.total_member_count is counted by the server"),
    ({"member_count": "yes"}, "member_count must be true or false"),
    ({"cam": "https://cam"}, "cam must be an array"),
])
def test_bad_config_refused(change, words):
    from actors.server.spaceapi import check_config

    config = {k: v for k, v in {**MINIMAL, **change}.items() if v is not None}
    with pytest.raises(ConfigError, match=r"\[spaceapi\]") as err:
        check_config(config)
    assert words in str(err.value)


def test_good_configs():
    from actors.server.spaceapi import check_config

    check_config(MINIMAL)
    check_config({**MINIMAL, "state": {"open": False, "message": "closed for the winter"}, "member_count": False,
                  "sensors": {"total_member_count": [{"value": 3}]}, "ext_x": {"y": 1}})


def test_serve_refuses_a_bad_spaceapi(tmp_path):
    root = init_home_path(tmp_path)
    with open(root / "config.toml", "a") as f:
        f.write('\n[spaceapi]\nspace = "S"\nlogo = "l"\nurl = "u"\n')
    r = subprocess.run([sys.executable, "-m", "scripts.cli", "serve", "--home", str(root),
                        "--listen", f"127.0.0.1:{free_port()}"], cwd=ROOT, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 78, (r.stdout, r.stderr)
    assert "[spaceapi]: contact is required" in r.stdout
