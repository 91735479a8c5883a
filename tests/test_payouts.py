"""`dctrl payouts` end to end, on SQLite and PostgreSQL: broker, Vault, the chain simulator,
chain_notifier and payout_mgr as real processes, every step through the CLI as a subprocess.
The one stand-in is the price: a client with the ``price_notifier`` identity (as
tests/test_member_dues.py). The home is `dctrl init`'s, with its demo 2-of-3 treasury and the
co-signers' mnemonics in HOME/demo/cosignerN.key; a second admin, bob, approves.

One flow per database: request (admin), approve (bob), the PSBT exported and imported back
(base64 and binary), an altered PSBT refused with its reason, two co-signers' `payouts sign`,
broadcast, mined, confirmed, and the destination paid in the simulator.
"""

from __future__ import annotations

import argparse
import base64
import json
import time
from decimal import Decimal

import pytest

from tests.harness import BusClient, Network, chain_sim, dctrl, home_on, wait_for

PRICE = "50000.00"  # CAD per BTC: 100,000 sats = 50.00 CAD


@pytest.fixture(params=["sqlite", "postgresql"])
def home(request, tmp_path):
    with home_on(request.param, tmp_path / "home", "payouts_cli") as h:
        yield h


@pytest.fixture
def sim(home):
    with chain_sim(home, txindex=False) as s:  # bitcoind's default: what production sees
        yield s


def _last_price(home):
    from actors.db import connect
    from actors.payout_mgr import queries

    database = connect(home.database_url)
    try:
        return queries.has_tables(database) and queries.last_price(database)
    finally:
        database.close()


def price_and_fund(home, prices, treasury, btc="0.00250000"):
    """(Shared setup) payout_mgr hears a fresh price; the treasury's first receive address is paid
    ``btc`` and the coin confirmed with its raw transaction. Returns ``treasury show --json``."""
    def priced():
        prices.publish("price.btc_cad", {"cad_per_btc": PRICE, "sources": [], "used": 2,
                                         "as_of": int(time.time() * 1000)})
        return _last_price(home)
    wait_for(priced, timeout=30, interval=0.5, what="payout_mgr to hear the price")
    wait_for(lambda: treasury_show(home)["gap"]["receive"]["acked"] >= 1, timeout=30, what="the treasury watched")
    dctrl(home, "sim", "pay", treasury.address(0)[0], btc)
    dctrl(home, "sim", "mine", "1")
    return wait_for(lambda: (t := treasury_show(home))["utxos"] and t["utxos"][0]["state"] == "confirmed"
                    and t["utxos"][0]["raw_tx"] and t, timeout=30,
                    what="the treasury's coin confirmed with its raw transaction")


def treasury_show(home):
    return json.loads(dctrl(home, "treasury", "show", "--json").stdout)


def payout_show(home, pid=1):
    return json.loads(dctrl(home, "payouts", "show", str(pid), "--json").stdout)


@pytest.mark.slow
def test_a_payout_requested_approved_signed_by_two_co_signers_is_confirmed(home, sim, tmp_path):
    from actors.payout_mgr import psbt as tx
    from actors.payout_mgr.treasury import Treasury

    treasury = Treasury(home.config["treasury"]["descriptor"], "regtest")
    key = [home.root / "demo" / f"cosigner{n}.key" for n in (1, 2, 3)]
    dctrl(home, "keys", "add", "bob", "--role", "admin")
    net = Network(home)
    prices = None
    try:
        net.start_healthy("broker", "vault", "event_logger", "chain_notifier", "payout_mgr", timeout=30)
        gone = dctrl(home, "payouts", "list", check=False)  # nothing requested yet: an empty list
        assert gone.returncode == 0 and "no payouts" in gone.stdout, gone.stderr
        prices = BusClient(home, "price_notifier")

        price_and_fund(home, prices, treasury)

        dest = sim.new_address()
        asked = dctrl(home, "payouts", "request", "--to", dest, "--sats", "100000", "--reason", "revenue share Q3",
                      "--kind", "share")
        assert "payout 1: requested" in asked.stdout, asked.stdout
        own = dctrl(home, "payouts", "approve", "1", check=False)  # the requester cannot approve their own
        assert own.returncode != 0 and "cannot approve their own" in own.stderr, own.stderr
        assert "approved by bob" in dctrl(home, "payouts", "approve", "1", "--as", "bob").stdout

        def show():
            return payout_show(home, 1)
        v = wait_for(lambda: (s := show())["state"] == "awaiting_signatures" and s, timeout=30,
                     what="the payout's PSBT built")
        assert (v["state"], v["kind"], v["sats"], v["cad"], v["destination"]) == (
            "awaiting_signatures", "share", 100_000, "50.00", dest)
        assert [(o["address"], o["sats"]) for o in v["outputs"] if not o["change"]] == [(dest, 100_000)]
        (change,) = [o for o in v["outputs"] if o["change"]]
        assert change["sats"] == 250_000 - 100_000 - v["fee"] and v["fee"] > 0 and Decimal(v["feerate"]) >= 1
        assert v["signed"] == 0 and v["needed"] == 2 and len(v["signers"]) == 3
        assert [h["state"] for h in v["history"]] == ["requested", "awaiting_signatures"]
        text = dctrl(home, "payouts", "show", "1").stdout
        assert "change, verified as the treasury's own" in text and "0 of the 2 needed" in text, text

        # the first co-signer: the software signer, the summary shown before signing
        signed = dctrl(home, "payouts", "sign", "1", "--key", str(key[0]))
        assert "You are signing:" in signed.stdout and "100,000 sats" in signed.stdout
        fp = tx.signing_key(treasury, key[0].read_text()).my_fingerprint.hex()  # (a master key: its own)
        assert f"as co-signer {fp}" in signed.stdout, signed.stdout
        assert "payout 1: awaiting_signatures" in signed.stdout and "warning" not in signed.stderr
        words = key[0].read_text().split()  # the key is never printed: no three of its words in a row
        # (one word alone is no evidence: a random demo mnemonic began with "story", which is in "history")
        said = " ".join((signed.stdout + signed.stderr).split())
        assert not any(" ".join(words[i:i + 3]) in said for i in range(len(words) - 2))

        # export and import back, base64 and binary: the same PSBT, nothing new, still waiting
        b64, binary = tmp_path / "p1.psbt.txt", tmp_path / "p1.psbt"
        dctrl(home, "payouts", "export", "1", "--out", str(b64))
        dctrl(home, "payouts", "export", "1", "--binary", "--out", str(binary))
        assert base64.b64decode(b64.read_text()) == binary.read_bytes() and binary.read_bytes()[:5] == b"psbt\xff"
        exported = tx.decode(binary.read_bytes())
        assert tx.signers(treasury, exported) == [s["fingerprint"] for s in show()["signers"] if s["signed"]]
        for f in (b64, binary):
            assert "payout 1: awaiting_signatures" in dctrl(home, "payouts", "import", "1", str(f)).stdout

        # an altered PSBT (more to the destination), signed by co-signer 3: refused with the reason
        forged = tx.decode(binary.read_bytes())
        out = next(o for o in forged.outputs if o.script_pubkey.address(treasury.net) == dest)
        out.value += 10_000
        tx.sign(treasury, forged, key[2].read_text())
        bad = tmp_path / "forged.psbt"
        bad.write_text(forged.to_base64())
        refused = dctrl(home, "payouts", "import", "1", str(bad), check=False)
        assert refused.returncode != 0 and "refused" in refused.stderr
        assert "not this payout's" in refused.stderr, refused.stderr
        assert show()["signed"] == 1

        # the second co-signer: enough; payout_mgr finalizes and broadcasts
        done = dctrl(home, "payouts", "sign", "1", "--key", str(key[1]))
        assert "payout 1: signed" in done.stdout, done.stdout
        v = wait_for(lambda: (s := show())["state"] == "broadcast" and s, timeout=30, what="the payout broadcast")
        assert v["txid"] in sim.call("getrawmempool")
        dctrl(home, "sim", "mine", "1")
        v = wait_for(lambda: (s := show())["state"] == "confirmed" and s, timeout=30, what="the payout confirmed")
        assert [h["state"] for h in v["history"]] == ["requested", "awaiting_signatures", "signed", "broadcast",
                                                      "confirmed"]
        assert sorted(s["brought_by"] for s in v["signers"] if s["signed"]) == ["admin", "admin"]
        paid = sim.call("scantxoutset", "start", [f"addr({dest})"])
        assert [(u["txid"], u["amount"]) for u in paid["unspents"]] == [(v["txid"], Decimal("0.00100000"))]
        (row,) = json.loads(dctrl(home, "payouts", "list", "--state", "confirmed", "--json").stdout)
        assert (row["id"], row["txid"], row["sats"]) == (1, v["txid"], 100_000)
        late = dctrl(home, "payouts", "cancel", "1", "--reason", "too late", check=False)
        assert late.returncode != 0 and "is confirmed" in late.stderr, late.stderr
    finally:
        if prices is not None:
            prices.close()
        net.close()


# -- without processes ----------------------------------------------------------------------------

def test_every_payouts_action_explains_itself_in_its_help():
    from scripts.cli import build_parser

    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    payouts = next(a for a in top["payouts"]._actions if isinstance(a, argparse._SubParsersAction))
    assert set(payouts.choices) == {"list", "show", "request", "approve", "reject", "cancel", "export", "import",
                                    "sign", "bump"}
    for name, sp in payouts.choices.items():
        text = sp.format_help()
        assert sp.description and len(sp.description) > 30, name
        assert all(a.help for a in sp._actions), name
        assert text.startswith(f"usage: dctrl payouts {name}"), text
    refund = next(a for a in top["invoices"]._actions if isinstance(a, argparse._SubParsersAction)).choices["refund"]
    assert "refund" in refund.description and "--rate" in refund.format_help()


def test_without_payout_mgr_the_reads_say_so_and_the_commands_say_no_one_answered(tmp_path):
    from tests.harness import new_home

    home = new_home(tmp_path / "home")
    for args in (("list",), ("show", "1"), ("export", "1")):
        r = dctrl(home, "payouts", *args, check=False)
        assert r.returncode == 2 and "payout_mgr has not run on this database" in r.stderr, r.stderr
    r = dctrl(home, "payouts", "request", "--to", "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080", "--cad", "1.234",
              "--reason", "x", check=False)
    assert r.returncode == 2 and "at most 2 decimals" in r.stderr, r.stderr
    r = dctrl(home, "payouts", "approve", "1", "--timeout", "1", check=False)
    assert r.returncode == 2 and "no answer from payout_mgr" in r.stderr, r.stderr


@pytest.mark.parametrize("argv, topic, body", [
    (["payouts", "request", "--to", "bcrt1qdest000000000", "--cad", "12.50", "--reason", "rent", "--kind", "share"],
     "cmd.payouts.request", {"to": "bcrt1qdest000000000", "sats": None, "cad": "12.50", "kind": "share",
                             "reason": "rent"}),
    (["payouts", "request", "--to", "bcrt1qdest000000000", "--sats", "5000", "--reason", "rent"],
     "cmd.payouts.request", {"to": "bcrt1qdest000000000", "sats": 5000, "cad": None, "kind": "manual",
                             "reason": "rent"}),
    (["payouts", "approve", "3"], "cmd.payouts.approve", {"payout": 3, "reason": None}),
    (["payouts", "reject", "3", "--reason", "not ours"], "cmd.payouts.reject", {"payout": 3, "reason": "not ours"}),
    (["payouts", "cancel", "3", "--reason", "typo"], "cmd.payouts.cancel", {"payout": 3, "reason": "typo"}),
    (["payouts", "bump", "3", "--feerate", "12.5"], "cmd.payouts.bump", {"payout": 3, "feerate": "12.5"}),
    (["invoices", "refund", "42", "--to", "bcrt1qdest000000000", "--rate", "now"], "cmd.payouts.refund",
     {"invoice": 42, "to": "bcrt1qdest000000000", "rate": "now", "reason": None}),
])
def test_each_command_sends_a_body_its_schema_takes(monkeypatch, capsys, argv, topic, body):
    """What PayoutMgr receives from each command (the whole flow on processes is above; the
    bodies of reject, cancel and refund are checked here against proto/topics.py)."""
    import os

    from proto.topics import REGISTRY
    from scripts.cli import main, payouts

    sent = []

    def send(args, verb, b):
        sent.append((f"cmd.payouts.{verb}", b))
        return {"status": "done", "payout": 3, "state": "requested", "reason": None}
    monkeypatch.setattr(payouts, "send", send)
    assert main([*argv, "--home", "/nonexistent"]) == 0
    assert sent == [(topic, body)]
    REGISTRY.schema_for(topic).check({**body, "id": os.urandom(16), "expires": 1})
    assert "payout 3: requested" in capsys.readouterr().out


def test_a_key_file_others_can_read_is_warned_about_and_never_echoed(tmp_path, capsys):
    from scripts.cli.payouts import _read_key

    words = "abandon " * 11 + "about"
    f = tmp_path / "cosigner.key"
    f.write_text(words + "\n")
    f.chmod(0o600)
    assert _read_key(str(f)).split() == words.split()
    assert capsys.readouterr().err == ""
    f.chmod(0o644)
    _read_key(str(f))
    err = capsys.readouterr().err
    assert "can be read by others (mode 0644)" in err and "abandon" not in err
