"""`dctrl status` shows what is wrong (issue 9, item 6).

- every registered machine has a row: ``down`` when no heartbeat came (exit 1), ``revoked``
  when its keys are (shown, not expected);
- an edit of policy.toml or registry.json that the broker and the Vault could not apply (they
  keep the previous one) is in their heartbeat: ``degraded``, the reason in DETAIL, exit 1.

The broker, the Vault and the event logger run as processes; the other server actors and
the machine are stand-ins: real Runtimes with those identities' keys, whose heartbeats are
all `dctrl status` looks at.
"""

import json

from tests.harness import dctrl, topic_is, wait_for

STAND_INS = ("price_notifier", "chain_notifier", "business_data", "member_data", "member_mail", "business_mgr",
             "reporter", "payout_mgr")
SERVER = "broker,vault,event_logger"


def rows(out: str) -> dict:
    """NAME -> (ROLE, STATUS, whole line) of `dctrl status`'s table."""
    table = {}
    for line in out.splitlines()[1:]:
        name, role, status = line.split()[:3]
        table[name] = (role, status, line)
    return table


def status_json(home, *args) -> tuple[int, dict]:
    out = dctrl(home, "status", "--json", *args, check=False)
    assert out.returncode in (0, 1), out.stderr
    return out.returncode, json.loads(out.stdout)


def test_every_registered_machine_is_listed_and_one_down_fails(home, network, clients):
    for name in STAND_INS:
        clients(home, name)
    vm1 = clients(home, "vm1")
    ok = dctrl(home, "status", "--until", "20", check=False)
    assert ok.returncode == 0, ok.stdout  # the positive control: every actor and vm1 heard
    assert rows(ok.stdout)["vm1"][1] == "ok"  # (its role column is the stand-in's, "test")

    # A machine registered whose agent never ran: listed down, and status fails.
    dctrl(home, "keys", "add", "vm2", "--role", "machine")
    out = dctrl(home, "status", check=False)
    assert out.returncode == 1, out.stdout
    assert rows(out.stdout)["vm2"][:2] == ("machine", "down")
    code, report = status_json(home)
    assert (code, report["missing"], report["down"]) == (1, ["vm2"], ["vm2"])

    # Revoked: listed as such, and no longer expected (wait for everyone to be reported ok).
    dctrl(home, "keys", "revoke", "vm2")
    out = dctrl(home, "status", "--until", "20", check=False)
    assert out.returncode == 0, out.stdout
    assert rows(out.stdout)["vm2"][:2] == ("machine", "revoked")
    code, report = status_json(home, "--until", "20")
    assert (code, report["missing"], report["down"], report["revoked"]) == (0, [], [], ["vm2"])

    # The demo machine's agent stops: vm1 is down, exit 1.
    vm1.close()
    out = dctrl(home, "status", check=False)
    assert out.returncode == 1, out.stdout
    assert rows(out.stdout)["vm1"][:2] == ("machine", "down")
    assert rows(out.stdout)["vm2"][:2] == ("machine", "revoked")


def test_a_policy_edit_the_broker_and_vault_could_not_apply_shows_in_status(home, network):
    ok = dctrl(home, "status", "--expect", SERVER, "--until", "20", check=False)
    assert ok.returncode == 0, ok.stdout
    good = home.policy_path.read_text()
    home.policy_path.write_text(good.replace("[identity.vault]\npublish", "[identity.vault]\npublsh", 1))
    reason = (f"policy.toml not applied (the previous one is in force): {home.policy_path}: "
              "[identity.vault] unknown key 'publsh' (did you mean 'publish'?)")

    def refused_by_both():
        code, report = status_json(home, "--expect", SERVER)
        beats = report["actors"]
        return all(beats.get(n, {}).get("status") == "degraded" and beats[n]["detail"] == reason
                   for n in ("broker", "vault")) and (code, report["missing"]) == (1, ["broker", "vault"])
    wait_for(refused_by_both, timeout=30, what="the broker's and the Vault's heartbeats to say why")
    out = dctrl(home, "status", "--expect", SERVER, check=False)
    assert out.returncode == 1
    table = rows(out.stdout)
    for name in ("broker", "vault"):
        assert table[name][1] == "degraded" and table[name][2].endswith(reason), table[name]
    assert table["event_logger"][1] == "ok"

    # Fixed: both apply it and are ok again.
    home.policy_path.write_text(good)
    out = dctrl(home, "status", "--expect", SERVER, "--until", "30", check=False)
    assert out.returncode == 0, out.stdout
    assert "not applied" not in out.stdout


def test_a_registry_edit_they_could_not_apply_is_in_the_heartbeat(home, network, clients):
    watch = clients(home, "admin", prefixes=["health.broker", "health.vault"])
    good = home.registry_path.read_text()
    home.registry_path.write_text(good[: len(good) // 2])  # a hand edit cut short
    for name in ("broker", "vault"):
        beat = watch.expect(topic_is(f"health.{name}", status="degraded"), what=f"{name} degraded")
        assert beat.message.body["detail"].startswith(
            f"registry.json not applied (the previous one is in force): {home.registry_path} is not a valid registry")
    # status itself reads the registry: it says what is wrong in one line
    out = dctrl(home, "status", "--expect", SERVER, check=False)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "registry.json is not a valid registry" in out.stderr
    home.registry_path.write_text(good)
    for name in ("broker", "vault"):
        watch.expect(topic_is(f"health.{name}", status="ok"), what=f"{name} ok again")
