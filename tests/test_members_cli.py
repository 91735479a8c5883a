"""`dctrl members` and `dctrl plans`: the import's judgement of a CSV file (the parsing
function, without the bus), and the CLI end to end over the real bus (broker, Vault and
member_data as processes, `dctrl` as a subprocess) on SQLite and PostgreSQL."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from proto.errors import DctrlError
from scripts.cli.members import parse_import
from tests.harness import Network, dctrl, home_on, new_home, wait_for

PLANS = {"regular", "student"}
HEADER = "handle,name,email,plan,joined\n"


def judge(text: str | bytes, existing=()):
    data = text.encode() if isinstance(text, str) else text
    return parse_import(data, plans=PLANS, existing=set(existing))


def test_a_good_file_gives_every_row_as_a_command_body():
    check = judge(HEADER + "ada,Ada Lovelace,ada@example.org,regular,2026-01-31\n"
                           "bob, Bob Smith ,bob@example.org,student,\n")
    assert check.bad == []
    assert check.rows == [
        (2, {"handle": "ada", "name": "Ada Lovelace", "email": "ada@example.org", "plan": "regular",
             "joined": "2026-01-31"}),
        (3, {"handle": "bob", "name": "Bob Smith", "email": "bob@example.org", "plan": "student", "joined": None})]


def test_every_bad_row_is_reported_with_its_line_and_reason():
    check = judge(HEADER
                  + "ada,Ada,ada@example.org,regular,\n"       # 2 good
                  + "bob,Bob,bob@,regular,\n"                   # 3 bad email
                  + "\n"                                        # 4 blank: skipped
                  + "Carl,Carl,carl@example.org,regular,\n"     # 5 bad handle
                  + "dan,Dan,dan@example.org,gold,\n"           # 6 unknown plan
                  + "eve,Eve,eve@example.org,regular,2026-02-30\n"  # 7 no such date
                  + "fay,Fay\x1b[2J,fay@example.org,regular,\n"  # 8 control character
                  + "gus,Gus,gus@example.org,regular\n"         # 9 a field short
                  + "old,Old,old@example.org,regular,\n",       # 10 already present
                  existing={"old"})
    reasons = dict(check.bad)
    assert sorted(reasons) == [3, 5, 6, 7, 8, 9, 10] and [n for n, _ in check.rows] == [2]
    assert "not an address" in reasons[3] and "handle 'Carl'" in reasons[5]
    assert "unknown plan 'gold'" in reasons[6] and "not a date of the calendar" in reasons[7]
    assert "U+001B" in reasons[8] and "4 fields, expected 5" in reasons[9] and "already exists" in reasons[10]


def test_already_present_and_duplicated_handles_are_bad_rows():
    check = judge(HEADER + "ada,Ada,ada@example.org,regular,\nbob,Bob,b@example.org,regular,\n"
                           "ada,Ada Two,ada2@example.org,regular,\nold,Old,old@example.org,regular,\n",
                  existing={"old"})
    assert check.bad == [(2, "handle ada is also on line 4"), (4, "handle ada is also on line 2"),
                         (5, "member old already exists")]
    assert [b["handle"] for _, b in check.rows] == ["bob"]


def test_a_byte_order_mark_and_windows_line_endings_are_read_as_if_absent():
    plain = judge(HEADER + "ada,Ada,ada@example.org,regular,\nbob,Bob,bob@example.org,regular,\n")
    crlf = judge(b"\xef\xbb\xbf" + (HEADER + "ada,Ada,ada@example.org,regular,\nbob,Bob,bob@example.org,regular,\n")
                 .replace("\n", "\r\n").encode())
    assert crlf.rows == plain.rows and crlf.bad == [] and len(crlf.rows) == 2
    # a quoted field spanning lines: the next record's line number is still right
    check = judge(HEADER + 'ada,"Ada\r\nLovelace",ada@example.org,regular,\r\nbob,Bob,bob@,regular,\r\n')
    assert [n for n, _ in check.bad] == [2, 4] and "name contains a control character U+000D" in check.bad[0][1]
    assert "not an address" in check.bad[1][1]


@pytest.mark.parametrize("header, why", [
    ("handle,name,email,plan,joined,phone", "unknown column(s) 'phone'"),
    ("handle,name,plan", "missing column(s) email"),
    ("handle,name,email,email,plan", "repeated column(s) email"),
])
def test_unknown_missing_or_repeated_columns_are_an_error_naming_them(header, why):
    with pytest.raises(DctrlError, match="line 1: " + why.replace("(", r"\(").replace(")", r"\)")):
        judge(header + "\nada,Ada,ada@example.org,regular,x,y\n")


def test_a_file_that_is_not_utf8_or_empty_is_an_error():
    with pytest.raises(DctrlError, match="not UTF-8"):
        judge(HEADER.encode() + "zoë,Zoë,z@example.org,regular,\n".encode("latin-1"))
    with pytest.raises(DctrlError, match="empty"):
        judge("\n\n")


@pytest.fixture
def offline_home(tmp_path):
    """A home whose database has member_data's tables and a plan, and no bus running."""
    from actors.member_data.actor import MemberData

    home = new_home(tmp_path / "home")
    actor = MemberData(home)
    ack, _ = actor.execute("cmd.members.plan_set", {"id": b"\x01" * 16, "expires": 2**40, "name": "regular",
                                                    "cad": "40.00", "period": "month", "grace_days": 30,
                                                    "confirmations": 1})
    assert ack["status"] == "done"
    actor.teardown()
    return home


def run_import(home, monkeypatch, path, **flags):
    """`members import` with the bus replaced by a recorder that answers every command done;
    returns (exit status, the commands it would have sent)."""
    from scripts.cli import members as members_cli

    sent = []

    def record(args, commands):
        sent.extend(commands)
        return [{"status": "done", "reason": None} for _ in commands]
    monkeypatch.setattr(members_cli, "send_commands", record)
    args = argparse.Namespace(**{"home": str(home.root), "file": str(path), "dry_run": False, "skip_bad": False,
                                 "as_name": "admin", "timeout": 5.0, "members_cmd": "import", **flags})
    return members_cli.cmd_import(args), sent


def test_import_sends_nothing_on_a_dry_run_or_with_a_bad_row_and_the_good_rows_with_skip_bad(
        offline_home, monkeypatch, tmp_path, capsys):
    path = tmp_path / "m.csv"
    path.write_text(HEADER + "ada,Ada,ada@example.org,regular,\nbob,Bob,bob@,regular,\n")
    for flags in ({}, {"dry_run": True}):
        with pytest.raises(DctrlError, match=r"1 row\(s\) valid, 1 bad: nothing imported"):
            run_import(offline_home, monkeypatch, path, **flags)
        assert "m.csv:3: email 'bob@'" in capsys.readouterr().err
    assert run_import(offline_home, monkeypatch, path, dry_run=True, skip_bad=True) == (1, [])
    assert "would import 1 member(s)" in capsys.readouterr().out
    rc, sent = run_import(offline_home, monkeypatch, path, skip_bad=True)
    assert rc == 1 and [(t, b["handle"], b["plan"]) for t, b in sent] == [("cmd.members.add", "ada", "regular")]
    assert b"ada@example.org" not in sent[0][1]["personal"]  # sealed to member_data
    path.write_text(HEADER + "ada,Ada,ada@example.org,regular,\n")
    assert run_import(offline_home, monkeypatch, path, dry_run=True) == (0, [])
    assert run_import(offline_home, monkeypatch, path)[0] == 0


def test_members_set_opt_out_and_in_the_command_sent_member_data_applies_it_and_show_and_export(
        offline_home, monkeypatch, capsys):
    """`members set --opt-out/--opt-in` (the bus replaced by MemberData's own execute), then
    `members show` and `export` reading the database."""
    from actors.member_data.actor import MemberData
    from actors.member_data.models import seal_personal
    from keys.registry import Registry
    from scripts.cli import members as members_cli

    public = Registry.load(offline_home.registry_path).current("member_data").curve
    sent = []

    def execute(args, commands):
        actor = MemberData(offline_home)
        try:
            acks = []
            for topic, body in commands:
                sent.append((topic, body))
                ack, _ = actor.execute(topic, {**body, "id": os.urandom(16), "expires": 2**40})
                acks.append(ack)
            return acks
        finally:
            actor.teardown()
    monkeypatch.setattr(members_cli, "send_commands", execute)
    execute(None, [("cmd.members.add", {"handle": "ada", "plan": "regular", "joined": "2026-01-31",
                                        "personal": seal_personal(public, name="Ada", email="ada@example.org")})])

    def members_set(*flags):
        parsed = {"opt_out": None, "opt_in": None, "name": None, "email": None}
        for flag, value in zip(flags[::2], flags[1::2]):
            parsed[flag] = value
        args = argparse.Namespace(home=str(offline_home.root), handle="ada", as_name="admin", timeout=5.0,
                                  members_cmd="set", **parsed)
        return members_cli.cmd_members(args)

    assert members_set("opt_out", "statement, reminder") == 0
    assert "member ada: opted out of reminder and statement mail" in capsys.readouterr().out
    assert sent[-1][1]["opt_out"] == ["reminder", "statement"] and sent[-1][1]["opt_in"] is None
    shown = json.loads(dctrl(offline_home, "members", "export", "ada").stdout)
    assert shown["mail_opt_out"] == ["reminder", "statement"]
    assert shown["facts"][-1]["kind"] == "details" and shown["facts"][-1]["detail"] == "opt_out"
    assert members_set("opt_in", "reminder") == 0
    assert "opted out of statement" in dctrl(offline_home, "members", "show", "ada").stdout
    # refused before sending: not a kind one may opt out of, both ways at once, nothing at all
    n = len(sent)
    with pytest.raises(DctrlError, match="reminder and statement mail only"):
        members_set("opt_out", "receipt")
    with pytest.raises(DctrlError, match="both --opt-out and --opt-in"):
        members_set("opt_out", "reminder", "opt_in", "reminder")
    with pytest.raises(DctrlError, match="nothing to change"):
        members_set()
    assert len(sent) == n
    # refused by MemberData: no change (opted in already)
    with pytest.raises(DctrlError, match="refused: nothing to change"):
        members_set("opt_in", "reminder")
    assert json.loads(dctrl(offline_home, "members", "show", "ada", "--json").stdout)["mail_opt_out"] == ["statement"]
    assert members_set("opt_in", "statement") == 0
    assert "all (no opt-out)" in dctrl(offline_home, "members", "show", "ada").stdout


def test_an_older_member_table_gets_the_opt_out_column_at_start(offline_home):
    """A database of a version before opt-out: member_data adds member_member.mail_opt_out."""
    from actors.db import connect
    from actors.member_data.actor import MemberData
    from actors.member_data.queries import opted_out

    database = connect(offline_home.database_url)
    try:
        database.execute_sql('ALTER TABLE "member_member" DROP COLUMN "mail_opt_out"')
        assert "mail_opt_out" not in {c.name for c in database.get_columns("member_member")}
        MemberData(offline_home, database=database).teardown()
        assert "mail_opt_out" in {c.name for c in database.get_columns("member_member")}
        assert opted_out(database, "nobody", "reminder") is False
    finally:
        database.close()


# -- end to end over the bus ------------------------------------------------------

@pytest.fixture(params=["sqlite", "postgresql"])
def members_net(request, tmp_path):
    """Broker, Vault and member_data as processes for a home on each database."""
    with home_on(request.param, tmp_path / "home", "md_cli") as home:
        net = Network(home).start_healthy("broker", "vault", "event_logger", "member_data")
        try:
            yield home, net
        finally:
            net.close()


def test_members_add_pay_show_and_import_through_the_real_bus(members_net, tmp_path):
    home, net = members_net
    out = dctrl(home, "plans", "set", "regular", "--cad", "40.00", "--period", "month", "--grace-days", "30")
    assert "plan regular: 40.00 CAD a month" in out.stdout
    assert json.loads(dctrl(home, "plans", "list", "--json").stdout)[0]["cents"] == 4000
    out = dctrl(home, "plans", "set", "slow", "--cad", "40.00", "--period", "month", "--grace-days", "30",
                "--term-days", "14")
    assert "plan slow: 40.00 CAD a month, due within 14 days, 30 days' grace" in out.stdout
    assert {p["name"]: p["term_days"] for p in json.loads(dctrl(home, "plans", "list", "--json").stdout)} == {
        "regular": 7, "slow": 14}
    listed = dctrl(home, "plans", "list").stdout.splitlines()
    assert listed[0].split()[:5] == ["PLAN", "CAD", "PERIOD", "TERM", "GRACE"] and listed[2].split()[:5] == [
        "slow", "40.00", "month", "14", "30"]
    long = dctrl(home, "plans", "set", "slow", "--cad", "40.00", "--period", "month", "--grace-days", "30",
                 "--term-days", "29", check=False)
    assert long.returncode == 2 and "term_days 29 is out of range: 0 to 28 for a month plan" in long.stderr
    dctrl(home, "members", "add", "ada", "--name", "Ada Lovelace", "--email", "ada@example.org",
          "--plan", "regular", "--joined", "2026-01-31")
    out = dctrl(home, "members", "pay", "ada", "--cad", "40.00", "--method", "cash", "--note", "at the door")
    assert "payment of 40.00 CAD (cash) recorded" in out.stdout
    shown = json.loads(dctrl(home, "members", "show", "ada", "--json").stdout)
    assert (shown["name"], shown["email"], shown["plan"], shown["joined"]) == (
        "Ada Lovelace", "ada@example.org", "regular", "2026-01-31")
    assert [(p["cents"], p["method"], p["note"]) for p in shown["payments"]] == [(4000, "cash", "at the door")]
    text = dctrl(home, "members", "show", "ada").stdout
    assert "40.00 CAD" in text and "at the door" in text

    # refusals come back with member_data's reason; a bad amount is caught before sending
    again = dctrl(home, "members", "add", "ada", "--name", "A", "--email", "a@example.org", "--plan", "regular",
                  check=False)
    assert again.returncode == 2 and "refused: member ada already exists" in again.stderr
    bad = dctrl(home, "members", "pay", "ada", "--cad", "40.001", "--method", "cash", "--note", "x", check=False)
    assert bad.returncode == 2 and "more than 2 decimals" in bad.stderr

    # an import with one bad row writes nothing; --dry-run sends nothing; --skip-bad imports the rest
    csv_file = tmp_path / "members.csv"
    csv_file.write_bytes(b"\xef\xbb\xbf" + (HEADER + "bob,Bob,bob@example.org,regular,\r\n"
                                            "cat,Cat,cat@,regular,\r\n").encode())
    out = dctrl(home, "members", "import", str(csv_file), check=False)
    assert out.returncode == 2 and f"{csv_file}:3: email 'cat@'" in out.stderr and "nothing imported" in out.stderr
    out = dctrl(home, "members", "import", str(csv_file), "--dry-run", "--skip-bad", check=False)
    assert out.returncode == 1 and "would import 1 member(s)" in out.stdout
    assert [m["handle"] for m in json.loads(dctrl(home, "members", "list", "--json").stdout)] == ["ada"]
    out = dctrl(home, "members", "import", str(csv_file), "--skip-bad", check=False)
    assert out.returncode == 1 and "imported 1 member(s); 1 bad row(s) skipped" in out.stdout
    listed = dctrl(home, "members", "list", "--csv").stdout.splitlines()
    assert listed[0] == "handle,plan,joined,left,groups,forgotten,status" and [r.split(",")[0] for r in listed[1:]] == [
        "ada", "bob"]
    # the event log records every message on the bus: commands (name and email sealed to member_data),
    # events and answers; no name or email is in it
    def logged():
        out = dctrl(home, "events", "query", "--topic", "member", "--json").stdout
        return out if out.count('"member.changed"') >= 5 else None  # ada joined, plan, paid; bob joined, plan
    wait_for(logged, what="member.changed in the event log")
    events = dctrl(home, "events", "query", "--json").stdout
    assert '"cmd.members.add"' in events and '"members.ack"' in events and '"handle": "ada"' in events
    for personal in ("Ada Lovelace", "ada@example.org", "Bob", "bob@example.org"):
        assert personal not in events
