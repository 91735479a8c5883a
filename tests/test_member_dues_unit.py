"""Dues in bitcoin: MemberData's dues addresses and chain payments on the fake runtime
(actors/testing.py), on SQLite and PostgreSQL.

The test plays the chain notifier (discovery answers, watch acks, chain.tx.* events) and the
price notifier with messages the kit builds (schema-checked, the sender's grant checked against
the home's policy). Time is a FakeClock that MemberData's module sees as its ``time``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from decimal import Decimal

import pytest

from actors.chain.addresses import Deriver
from actors.member_data.actor import MemberData
from actors.member_data.models import MemberAdjustment, MemberChainPayment, MemberPayment, seal_personal
from actors.member_data.queries import chain_payments, dues_gap, dues_uri, last_price, member
from actors.testing import FakeClock, FakeRuntime
from keys.registry import Registry
from tests.harness import new_home
from tests.unit_db import empty, unit_home

ACK = "members.ack"
PRICE = "50000.00"  # CAD per BTC
SOURCES = [{"name": "kraken", "fresh": True, "price": PRICE, "age_s": 1, "error": None, "used": True},
           {"name": "coinbase", "fresh": True, "price": PRICE, "age_s": 2, "error": None, "used": True},
           {"name": "bitstamp", "fresh": False, "price": None, "age_s": None, "error": "timeout", "used": False}]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def home(request, tmp_path_factory):
    with unit_home(request.param, tmp_path_factory.mktemp("dues_unit") / "home", "dues_unit") as h:
        yield h


class Dues:
    """MemberData on a fake runtime, with the test as chain notifier, price notifier and admin."""

    def __init__(self, home):
        self.home = home
        self.clock = FakeClock()
        self._patch = self.clock.patch(sys.modules[MemberData.__module__])
        self._patch.__enter__()
        self.deriver = Deriver(home.config["members"]["receive"], "regtest")
        self.public = Registry.load(home.registry_path).current("member_data").curve
        self.start()

    def start(self):
        self.actor = MemberData(self.home, clock=self.clock.time)
        self.rt = FakeRuntime(self.actor, name="member_data", clock=self.clock, home=self.home).start()
        self.answered = 0

    def restart(self):
        self.rt.stop()
        self.start()

    def close(self):
        try:
            self.rt.stop()
        finally:
            self._patch.__exit__(None, None, None)

    @property
    def db(self):
        return self.actor.database

    # -- the admin ---------------------------------------------------------------------

    def command(self, topic, **body):
        body = {"id": os.urandom(16), "expires": int(self.clock.time()) + 60, **body}
        self.rt.send(topic, body, sender="admin")
        (ack,) = self.rt.bodies(ACK, id=body["id"])
        assert ack["status"] == "done", ack

    def plan(self, confirmations=2, cad="40.00"):
        self.command("cmd.members.plan_set", name="regular", cad=cad, period="month", grace_days=30,
                     confirmations=confirmations)

    def add(self, handle="ada"):
        self.command("cmd.members.add", handle=handle, plan="regular", joined="2026-01-31",
                     personal=seal_personal(self.public, name=f"Member {handle}", email=f"{handle}@example.org"))

    # -- the chain notifier ---------------------------------------------------------------

    def serve(self, highest=None, outputs=None):
        """Answer every discovery and watch published since the last call (``outputs``:
        address -> the watch ack's outputs)."""
        published = self.rt.published
        while self.answered < len(published):  # (an answer may make MemberData publish more)
            topic, body = published[self.answered]
            self.answered += 1
            if topic == "cmd.chain.discover":
                self.rt.send("chain.discover.ack", {"id": body["id"], "book": body["book"], "status": "done",
                                                    "reason": None, "highest": highest, "scanned": body["gap"]},
                             sender="chain_notifier")
            elif topic == "cmd.chain.watch":
                self.rt.send("chain.watch.ack", {"id": body["id"], "address": body["address"],
                                                 "script": "0014" + "00" * 20, "status": "watching", "reason": None,
                                                 "outputs": (outputs or {}).get(body["address"], [])},
                             sender="chain_notifier")

    def run(self, seconds=1.0, **serve):
        self.serve(**serve)
        for _ in range(max(1, round(seconds / 0.25))):
            self.rt.advance(0.25)
            self.serve(**serve)

    def ready(self, handles=("ada",), confirmations=2, highest=None):
        """A plan, members, the discovery answered, a fresh price."""
        self.plan(confirmations)
        for h in handles:
            self.add(h)
        self.price(PRICE)
        self.run(1.0, highest=highest)

    def chain(self, address, sats, state="seen", tx=None, confirmations=0, vout=0):
        tx = tx or hashlib.sha256(os.urandom(8)).hexdigest()
        body = {"event_id": hashlib.sha256(f"{state}{tx}{vout}{confirmations}".encode()).hexdigest(), "txid": tx,
                "vout": vout, "address": address, "script": "0014" + "00" * 20, "sats": sats, "label": None}
        if state == "seen":
            body["rbf"] = False
        elif state == "confirmed":
            body.update(confirmations=confirmations, height=100 + confirmations, block="ab" * 32)
        elif state == "replaced":
            body["by"] = hashlib.sha256(b"replacement" + tx.encode()).hexdigest()
        elif state == "removed":
            body["reason"] = "reorged out"
        self.rt.send(f"chain.tx.{state}", body, sender="chain_notifier")
        self.serve()
        return tx

    # -- the price notifier -------------------------------------------------------------------

    def price(self, cad_per_btc, sources=SOURCES):
        self.rt.send("price.btc_cad", {"cad_per_btc": cad_per_btc, "sources": sources, "used": 2,
                                       "as_of": int(self.clock.time() * 1000) - 1500}, sender="price_notifier")

    def stale(self):
        self.rt.send("price.stale", {"reason": "1 of 3 sources fresh", "fresh": 1, "needed": 2, "sources": SOURCES},
                     sender="price_notifier")

    # -- reading ------------------------------------------------------------------------------

    def shown(self, handle="ada"):
        return member(self.db, handle)

    def address(self, handle="ada"):
        return self.shown(handle)["dues_address"]

    def count(self, model):
        return model.select().bind(self.db).count()


@pytest.fixture
def dues(home):
    empty(home.database_url)
    d = Dues(home)
    yield d
    d.close()


def cents_of(sats, cad_per_btc):
    return int(Decimal(sats) * Decimal(cad_per_btc) / 1_000_000)  # (positive: int() floors)


# -- addresses -------------------------------------------------------------------------------

def test_no_dues_address_until_the_discovery_answers(dues):
    dues.plan()
    dues.add("ada")
    dues.rt.advance(3.0)  # discoveries asked (and re-asked), none answered
    asked = dues.rt.bodies("cmd.chain.discover")
    assert len(asked) >= 2 and {b["book"] for b in asked} == {"dues"} and asked[0]["start"] == 0
    assert dues.address() is None and not dues.rt.bodies("cmd.chain.watch")
    assert "no dues address handed out yet" in dues.actor.health()[1]
    dues.run(0.5)  # answered: nothing used on the chain
    assert dues.address() == dues.deriver.address(0)[0]
    (watch,) = dues.rt.bodies("cmd.chain.watch", address=dues.address())
    assert int(dues.clock.time()) - 2 <= watch["since"] <= int(dues.clock.time()) and watch["label"] == "dues ada"
    shown = dues.shown()
    assert shown["dues_uri"] == f"bitcoin:{dues.deriver.address(0)[0]}"
    assert shown["dues_addresses"][0]["watched"] is True
    dues.add("bob")  # after the discovery: an address at once, the next index
    assert dues.address("bob") == dues.deriver.address(1)[0]


def test_an_address_with_history_is_never_handed_out(dues):
    dues.ready(highest=4)  # indexes 0..4 have history on the chain (another database, a restored wallet)
    assert dues.address() == dues.deriver.address(5)[0]
    assert dues.address() not in {dues.deriver.address(i)[0] for i in range(5)}


@pytest.mark.parametrize("form, why", [("xpub", "same key as [business] receive"),
                                       ("descriptor", "derives the same addresses as [business] receive"),
                                       ("own", None)])
def test_the_same_key_as_sales_is_refused_with_a_clear_error(tmp_path, form, why):
    h = new_home(tmp_path / "home")
    cfg = h.root / "config.toml"
    sales, dues_key = h.config["business"]["receive"], h.config["members"]["receive"]
    assert dues_key and dues_key != sales  # `dctrl init` gives each its own account
    if form != "own":
        cfg.write_text(cfg.read_text().replace(dues_key, sales if form == "xpub" else f"wpkh({sales}/0/*)"))
    from keys.home import Home

    actor = MemberData(Home(h.root))
    try:
        status, detail = actor.health()
        if why is None:  # the control: its own account is taken
            assert actor.book is not None and "no dues address handed out yet" in detail
            return
        assert status == "degraded" and why in detail
        assert actor.book is None and actor.discovery is None  # no dues address could be an invoice's
    finally:
        actor.teardown()


# -- payments --------------------------------------------------------------------------------

def test_a_payment_counts_once_at_the_plans_confirmations_valued_at_its_first_seen_price(dues):
    dues.ready(confirmations=2)
    address, sats = dues.address(), 80_000  # 40.00 CAD at 50000 CAD/BTC
    tx = dues.chain(address, sats, "seen")
    dues.price("60000.00")  # the price moves after the payment was seen: its value does not
    dues.chain(address, sats, "confirmed", tx=tx, confirmations=1)
    assert dues.count(MemberPayment) == 0 and not dues.rt.bodies("member.changed", kind="paid")
    dues.chain(address, sats, "confirmed", tx=tx, confirmations=2)
    (pay,) = dues.shown()["payments"]
    assert (pay["method"], pay["cents"], pay["txid_vout"]) == ("bitcoin", cents_of(sats, PRICE), f"{tx}:0")
    assert pay["cents"] == 4000
    (cp,) = chain_payments(dues.db, "ada")
    assert (cp["cad_per_btc"], cp["rate_sources"], cp["rate_late"], cp["payment"]) == (
        PRICE, ["kraken", "coinbase"], False, pay["id"])
    assert cp["rate_as_of"] is not None and "kraken, coinbase" in pay["note"]
    (event,) = dues.rt.bodies("member.changed", kind="paid")
    assert event == {"handle": "ada", "kind": "paid", "ref": pay["id"], "on": pay["on"],
                     "event_id": event["event_id"]}  # the handle only: no name, no email
    # repeated and further events change nothing
    for _ in range(2):
        dues.chain(address, sats, "confirmed", tx=tx, confirmations=2)
    dues.chain(address, sats, "confirmed", tx=tx, confirmations=3)
    dues.chain(address, sats, "seen", tx=tx)
    dues.chain(address, sats, "confirmed", tx=tx, confirmations=2)
    dues.restart()
    dues.run(1.0, outputs={address: [{"txid": tx, "vout": 0, "sats": sats, "state": "confirmed",
                                      "confirmations": 6, "height": 101, "rbf": False, "seen_at": 1, "by": None}]})
    assert dues.count(MemberPayment) == 1 and len(dues.rt.bodies("member.changed", kind="paid")) == 0
    assert dues.count(MemberAdjustment) == 0


def test_a_payment_is_dated_the_day_it_was_first_seen(dues):
    dues.ready(confirmations=2)
    dues.clock.wall = 1_800_057_000.0  # 2027-01-15 23:50 UTC
    tx = dues.chain(dues.address(), 80_000, "seen")
    dues.rt.advance(20 * 60)  # confirmed after midnight
    dues.price(PRICE)
    first = dues.shown()["dues_addresses"][0]["address"]  # (ada's next address was handed out when it was seen)
    dues.chain(first, 80_000, "confirmed", tx=tx, confirmations=2)
    (pay,) = dues.shown()["payments"]
    assert pay["on"] == "2027-01-15" and dues.rt.last("member.changed")["on"] == "2027-01-15"


def test_a_payment_an_admin_reversed_already_is_not_reversed_again(dues):
    dues.ready(confirmations=1)
    address = dues.address()
    tx = dues.chain(address, 80_000, "confirmed", confirmations=1)
    (pay,) = dues.shown()["payments"]
    dues.command("cmd.members.adjust", handle="ada", cad="-40.00", note="refunded", on=None, reverses=pay["id"])
    dues.chain(address, 80_000, "removed", tx=tx)
    assert [a["note"] for a in dues.shown()["adjustments"]] == ["refunded"]
    assert not dues.actor.runtime.errors


def test_one_confirmation_plan_counts_at_the_first_block(dues):
    dues.ready(confirmations=1)
    tx = dues.chain(dues.address(), 100_000, "seen")
    assert dues.count(MemberPayment) == 0
    dues.chain(dues.address(), 100_000, "confirmed", tx=tx, confirmations=1)
    assert dues.count(MemberPayment) == 1


@pytest.mark.parametrize("how", ["price.stale", "too old", "no price yet"])
def test_a_payment_first_seen_at_a_stale_price_is_valued_at_the_next_fresh_one(dues, how):
    dues.plan(confirmations=1)
    dues.add("ada")
    if how != "no price yet":
        dues.price(PRICE)
    dues.run(1.0)
    if how == "price.stale":
        dues.stale()
    elif how == "too old":
        dues.rt.advance(61)  # [members] price_max_age is 60 s
        dues.serve()
    address, sats = dues.address(), 80_000
    tx = dues.chain(address, sats, "seen")
    dues.chain(address, sats, "confirmed", tx=tx, confirmations=1)
    assert dues.count(MemberPayment) == 0  # confirmed enough, but no fresh price to value it at
    (cp,) = chain_payments(dues.db, "ada")
    assert cp["cad_per_btc"] is None and cp["payment"] is None
    assert "1 dues payment(s) waiting for a fresh price" in dues.actor.health()[1]
    dues.price("60000.00")
    assert "waiting for a fresh price" not in dues.actor.health()[1]
    (pay,) = dues.shown()["payments"]
    assert pay["cents"] == cents_of(sats, "60000.00") == 4800
    (cp,) = chain_payments(dues.db, "ada")
    assert (cp["cad_per_btc"], cp["rate_late"]) == ("60000.00", True)
    assert "after it was first seen" in pay["note"]
    dues.price("70000.00")  # valued once
    assert [p["cents"] for p in dues.shown()["payments"]] == [4800]


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_a_payment_reorged_out_or_replaced_after_it_counted_is_reversed_once(dues, how):
    dues.ready(confirmations=2)
    address, sats = dues.address(), 80_000
    tx = dues.chain(address, sats, "seen")
    dues.chain(address, sats, "confirmed", tx=tx, confirmations=2)
    (pay,) = dues.shown()["payments"]
    dues.chain(address, sats, "seen", tx=tx)  # the reorg sends it back to the mempool: still counted
    assert dues.count(MemberAdjustment) == 0
    dues.chain(address, sats, how, tx=tx)
    dues.chain(address, sats, how, tx=tx)
    (adj,) = dues.shown()["adjustments"]
    assert (adj["cents"], adj["reverses"]) == (-pay["cents"], pay["id"])
    assert f"{tx}:0" in adj["note"] and ("reorged out" if how == "removed" else "replaced by") in adj["note"]
    (event,) = dues.rt.bodies("member.changed", kind="adjusted")
    assert event["ref"] == adj["id"] and event["handle"] == "ada"
    assert dues.count(MemberPayment) == 1  # nothing edited or deleted


def test_a_payment_replaced_before_it_counted_is_never_counted(dues):
    dues.ready(confirmations=2)
    address = dues.address()
    tx = dues.chain(address, 80_000, "seen")
    dues.chain(address, 80_000, "replaced", tx=tx)
    dues.chain(address, 80_000, "confirmed", tx=tx, confirmations=1)
    assert dues.count(MemberPayment) == 0 and dues.count(MemberAdjustment) == 0


def test_a_payment_to_an_address_nobody_was_given_is_ignored_and_logged(dues, caplog):
    dues.ready()
    given = dues.address()
    stranger = dues.deriver.address(7)[0]  # of the dues key, never handed out
    with caplog.at_level(logging.INFO, logger=MemberData.__module__):
        tx = dues.chain(stranger, 80_000, "seen")
        dues.chain(stranger, 80_000, "confirmed", tx=tx, confirmations=6)
    assert dues.count(MemberChainPayment) == 0 and dues.count(MemberPayment) == 0
    assert any(stranger in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    assert dues.address() == given  # nobody's address moved on
    # the positive control: the same events to the given address count
    tx = dues.chain(given, 80_000, "seen")
    dues.chain(given, 80_000, "confirmed", tx=tx, confirmations=2)
    assert dues.count(MemberPayment) == 1


def test_after_a_paid_address_the_next_is_fresh_and_the_old_one_stays_watched(dues):
    dues.ready(handles=("ada", "bob"))
    first, bobs = dues.address(), dues.address("bob")
    tx = dues.chain(first, 80_000, "seen")
    second = dues.address()
    assert second not in (first, bobs) and second == dues.deriver.address(2)[0]
    assert dues.rt.bodies("cmd.chain.watch", address=second)
    assert dues.address("bob") == bobs  # bob's is unpaid: his stays
    # the old address still counts what is paid to it
    dues.chain(first, 80_000, "confirmed", tx=tx, confirmations=2)
    assert dues.count(MemberPayment) == 1
    # a restart watches every address handed out again, each with its birth time
    births = {a["address"]: a["issued_at"] for a in dues.shown()["dues_addresses"]}
    dues.restart()
    dues.rt.published.clear()
    dues.answered = 0
    dues.run(1.0)
    rewatched = {b["address"]: b["since"] for b in dues.rt.bodies("cmd.chain.watch")}
    assert rewatched == {first: births[first], second: births[second], bobs: dues.shown("bob")[
        "dues_addresses"][0]["issued_at"]}
    # a payment to the old address found by the watch ack after the restart (made while down) counts
    tx2 = hashlib.sha256(b"while down").hexdigest()
    dues.restart()
    dues.price(PRICE)
    dues.run(1.0, outputs={first: [{"txid": tx2, "vout": 1, "sats": 40_000, "state": "confirmed",
                                    "confirmations": 3, "height": 120, "rbf": False,
                                    "seen_at": int(dues.clock.time()) - 5, "by": None}]})
    assert [p["txid_vout"] for p in dues.shown()["payments"]] == [f"{tx}:0", f"{tx2}:1"]
    assert dues.shown()["payments"][1]["cents"] == cents_of(40_000, PRICE)


def test_a_restart_values_at_once_at_the_last_price_if_still_fresh_and_never_at_a_stale_one(dues):
    dues.ready(confirmations=1)
    dues.price("55000.00")
    dues.rt.advance(10)
    dues.restart()
    dues.run(0.5)
    tx = dues.chain(dues.address(), 80_000, "confirmed", confirmations=1)
    (cp,) = chain_payments(dues.db, "ada")
    assert (cp["cad_per_btc"], cp["rate_late"]) == ("55000.00", False)  # the price kept over the restart
    assert last_price(dues.db)["cad_per_btc"] == "55000.00"
    # a restart after the price went stale, and one with a price too old: nothing valued until a fresh one
    for stale in (True, False):
        if stale:
            dues.stale()
        else:
            dues.price("56000.00")
            dues.rt.advance(61)
        dues.restart()
        dues.run(0.5)
        address = dues.address()
        tx = dues.chain(address, 80_000, "confirmed", confirmations=1)
        assert chain_payments(dues.db, "ada")[-1]["cad_per_btc"] is None, stale
        dues.price("57000.00")
        assert [c["cad_per_btc"] for c in chain_payments(dues.db, "ada") if c["txid_vout"] == f"{tx}:0"] == [
            "57000.00"]


def test_a_payment_made_while_down_counts_after_a_restart_though_the_first_acks_are_lost_and_the_price_late(dues):
    """The orderings after a restart (tests/test_member_dues.py's flaky restart): the re-sent watch
    answered before this process hears its answers (lost: the bus keeps nothing), then answered
    again before the discovery is, with the price too old to value the payment at; it counts at
    the next price, once, and the next address comes once the discovery answers."""
    dues.ready(confirmations=2)
    address = dues.address()
    dues.rt.advance(61)  # the last price is older than price_max_age when the process comes back
    dues.restart()
    dues.rt.advance(0.5)
    sent = [b for t, b in dues.rt.published if t == "cmd.chain.watch"]
    assert [b["address"] for b in sent] == [address] and dues.rt.bodies("cmd.chain.discover")
    dues.rt.advance(dues.actor.cfg["watch_retry"])  # no answer heard: asked again, the same id
    again = [b for t, b in dues.rt.published if t == "cmd.chain.watch"][len(sent):]
    assert [b["id"] for b in again] == [sent[0]["id"]]
    tx = hashlib.sha256(b"paid while down").hexdigest()
    output = {"txid": tx, "vout": 0, "sats": 80_000, "state": "confirmed", "confirmations": 2, "height": 120,
              "rbf": False, "seen_at": int(dues.clock.time()) - 30, "by": None}
    for _ in range(2):  # (a duplicate answer changes nothing)
        dues.rt.send("chain.watch.ack", {"id": again[0]["id"], "address": address, "script": "0014" + "00" * 20,
                                         "status": "watching", "reason": None, "outputs": [output]},
                     sender="chain_notifier")
    (cp,) = chain_payments(dues.db, "ada")
    assert (cp["state"], cp["confirmations"], cp["cad_per_btc"]) == ("confirmed", 2, None)
    assert dues.count(MemberPayment) == 0  # no fresh price: it waits, it is not lost
    dues.price(PRICE)
    (pay,) = dues.shown()["payments"]
    assert (pay["txid_vout"], pay["cents"]) == (f"{tx}:0", 4000)
    assert dues.address() == address  # no next address before the discovery has answered
    dues.run(1.0)  # the discovery answered
    assert dues.address() != address and dues.count(MemberPayment) == 1


def test_the_bip21_uri_carries_one_periods_dues_rounded_up_to_the_satoshi():
    assert dues_uri("bcrt1qx") == "bitcoin:bcrt1qx"
    assert dues_uri("bcrt1qx", 4000, "50000.00") == "bitcoin:bcrt1qx?amount=0.00080000"
    assert dues_uri("bcrt1qx", 4000, "30000.00") == "bitcoin:bcrt1qx?amount=0.00133334"  # 133333.33 sats


def test_the_run_of_unused_dues_addresses_is_measured_and_said_past_the_gap_limit(dues):
    dues.ready(handles=("ada", "bob", "cyd"), highest=1)  # /0/0 and /0/1 used elsewhere (/0/1 recorded as such): 2, 3, 4 handed out
    assert dues_gap(dues.db) == {"issued": 4, "next": 5, "last_used": 1, "gap": 3, "gap_limit": 20}
    tx = dues.chain(dues.address("cyd"), 80_000, "seen")  # cyd's /0/4 paid: cyd gets /0/5
    assert dues_gap(dues.db)["last_used"] == 4 and dues_gap(dues.db)["gap"] == 1
    assert "unused dues addresses" not in dues.actor.health()[1]
    dues.actor.cfg["gap_limit"] = 0
    assert "1 unused dues addresses in a row, more than the gap limit (0)" in dues.actor.health()[1]
    assert tx


def test_member_data_is_granted_the_two_chain_commands_and_hears_the_chain_and_the_price(home):
    from keys.policy import Policy
    from proto.wire import prefix_frame, topic_frame

    grants = Policy.load(home.policy_path).grants("member_data", "actor")
    for topic in ("cmd.chain.watch", "cmd.chain.discover", "member.changed", "members.ack"):
        assert grants.may_publish(topic_frame(topic)), topic
    for topic in ("cmd.chain.rescan", "cmd.machine.vm1.vend", "chain.tx.seen", "price.btc_cad", "invoice.opened"):
        assert not grants.may_publish(topic_frame(topic)), topic
    for prefix in ("chain", "chain.tx", "chain.watch.ack", "chain.discover.ack", "price", "cmd.members"):
        assert grants.subscription(prefix_frame(prefix)) == (prefix_frame(prefix),), prefix
    assert grants.subscription(prefix_frame("machine")) == ()


def test_the_welcome_carries_the_dues_address_and_a_bitcoin_receipt_its_sats_and_rate(dues):
    """What MemberMail renders (actors/member_mail/context.py) from MemberData's records."""
    from actors.member_mail import context

    dues.ready(confirmations=1)
    address = dues.address()
    _, welcome = context.welcome(dues.db, "ada")
    assert (welcome["address"], welcome["uri"]) == (address, dues.shown()["dues_uri"])
    assert welcome["uri"].startswith(f"bitcoin:{address}")
    tx = dues.chain(address, 80_000, "seen")
    dues.chain(address, 80_000, "confirmed", tx=tx, confirmations=1)
    (pay,) = dues.shown()["payments"]
    period, receipt = context.receipt(dues.db, "ada", pay["id"])
    assert period == f"{tx}:0" and (receipt["txid"], receipt["vout"]) == (tx, 0)
    assert (receipt["sats"], receipt["rate"], receipt["cad_cents"], receipt["method"]) == (
        80_000, PRICE, pay["cents"], "bitcoin")
    _, welcome = context.welcome(dues.db, "ada")
    assert welcome["address"] == dues.address() != address  # after a paid address, the next one
