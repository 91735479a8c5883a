"""Payouts the policy asks for, on the fake runtime, on SQLite and PostgreSQL (issue 13 item 2):
a sweep of the treasury's excess to ``[payouts] sweep_to`` once its free confirmed balance is
above ``sweep_above_sats`` (once, not again while one is pending, again after it completed), and
``[payouts.shares]``: each destination's share of the previous month's vending sales, once per
month, across restarts. And the strict checks of those settings.

The fixtures and helpers are tests/test_payout_desk_unit.py's (a fake node with a mempool); the
clock starts on 2027-01-15 (actors/testing.py T0), so "last month" is 2026-12."""

from __future__ import annotations

import calendar
import contextlib

import pytest
from embit import ec
from embit.networks import NETWORKS
from embit.script import p2wpkh

from actors.business_mgr import models as sales_models
from actors.db import ensure_tables
from actors.payout_mgr import desk as desk_module
from actors.payout_mgr import ledger
from actors.payout_mgr.ledger import Payout
from actors.payout_mgr.models import PayoutAddress
from keys.schema import CONFIG, check
from proto.errors import ConfigError
from tests.test_payout_desk_unit import PRICE, Node, _cmd, _cosign, _events, _fund, _payout, home  # noqa: F401
from tests.test_payout_utxos_unit import Payouts
from tests.unit_db import empty


def _address(n: int) -> str:
    return p2wpkh(ec.PrivateKey((n + 1).to_bytes(32, "big")).get_public_key()).address(NETWORKS["regtest"])


COLD, ALICE_SHARE, BOB_SHARE, TINY_SHARE = (_address(n) for n in range(4))
T = calendar.timegm


@contextlib.contextmanager
def _desk(home, payouts: dict):
    saved = home.config.get("payouts")
    home.config["payouts"] = payouts
    empty(home.database_url)
    d = Payouts(home, Node())
    try:
        d.run(0.5)
        _price(d)
        yield d
    finally:
        d.close()
        home.config["payouts"] = saved


def _price(d):
    d.rt.send("price.btc_cad", {"cad_per_btc": PRICE, "sources": [], "used": 2,
                                "as_of": int(d.clock.time() * 1000)}, sender="price_notifier")


def _tick(d):
    """One look of the policy (POLICY_EVERY), the price kept fresh."""
    _price(d)
    d.rt.advance(desk_module.POLICY_EVERY)
    d.rt.run_pending()


def _policy_payouts(d, kind):
    with d.db.bind_ctx(ledger.MODELS):
        return list(Payout.select().where(Payout.kind == kind, Payout.requested_by == "payout_mgr")
                    .order_by(Payout.id))


def _pay_out(d, pid, height):
    """Approved, signed by co-signers 1 and 2, broadcast and mined."""
    assert _cmd(d, "approve", "bob", payout=pid, reason=None)["status"] == "done"
    _cosign(d, pid, 1, "alice")
    _cosign(d, pid, 2, "bob")
    d.rt.wait_for(lambda: _payout(d, pid).state == "broadcast", what="the broadcast")
    d.node.mine(_payout(d, pid).txid, height)
    d.block(height)
    d.rt.wait_for(lambda: _payout(d, pid).state == "confirmed", what="the confirmation")


# -- the sweep -----------------------------------------------------------------------------------

SWEEP = {"sweep_to": COLD, "sweep_above_sats": 150_000, "sweep_keep_sats": 50_000}


def test_a_sweep_is_requested_once_not_while_pending_and_again_after_it_completed(home):
    with _desk(home, SWEEP) as d:
        _fund(d, 100_000, index=0)
        _tick(d)
        assert _policy_payouts(d, "sweep") == []  # 100,000 is not above 150,000
        _fund(d, 100_000, index=1)
        _tick(d)
        (sweep,) = _policy_payouts(d, "sweep")
        assert (sweep.destination, sweep.sats, sweep.state) == (COLD, 150_000, "requested")  # 200,000 - 50,000 kept
        assert "200000 sats confirmed and free" in sweep.reason
        assert d.rt.last("payout.requested", payout=sweep.id)["by"] == "payout_mgr"
        _fund(d, 100_000, index=2)  # more money while the sweep is pending: no second sweep
        for _ in range(3):
            _tick(d)
        assert len(_policy_payouts(d, "sweep")) == 1
        d.restart()  # nor after a restart
        _tick(d)
        assert len(_policy_payouts(d, "sweep")) == 1
        # like any payout: an admin approves (payout_mgr cannot), co-signers sign
        _pay_out(d, sweep.id, 201)
        change = _payout(d, sweep.id).change_sats
        assert 0 < change < 50_000
        _tick(d)  # 100,000 + the sweep's change left free (the swept coins stay claimed): no sweep
        assert len(_policy_payouts(d, "sweep")) == 1
        _fund(d, 120_000, index=3)
        _tick(d)
        first, second = _policy_payouts(d, "sweep")
        assert first.state == "confirmed" and second.state == "requested"
        assert second.sats == 100_000 + change + 120_000 - 50_000
        # (payout.requested was published before the restart, by the runtime before it)
        assert _events(d, first.id) == ["awaiting_signatures", "signature", "signature", "signed", "broadcast",
                                        "confirmed"]


def test_a_sweep_leaves_what_requested_payouts_will_need(home):
    with _desk(home, SWEEP) as d:
        _fund(d, 250_000)
        manual = _cmd(d, "request", "alice", to=COLD, sats=80_000, cad=None, kind="manual", reason="rent")
        assert manual["status"] == "done"
        _tick(d)
        (sweep,) = _policy_payouts(d, "sweep")
        assert sweep.sats == 250_000 - 80_000 - 50_000


def test_a_sweep_of_dust_is_not_requested(home):
    with _desk(home, {"sweep_to": COLD, "sweep_above_sats": 100_000, "sweep_keep_sats": 100_000}) as d:
        _fund(d, 100_200)  # 200 sats above what is kept: below the dust limit of a P2WPKH output
        _tick(d)
        assert _policy_payouts(d, "sweep") == []
        _fund(d, 10_000, index=1)
        _tick(d)
        assert [p.sats for p in _policy_payouts(d, "sweep")] == [10_200]


def test_a_sweep_the_policy_refuses_is_not_requested_and_is_tried_again(home):
    with _desk(home, {**SWEEP, "max_payout_cad": "100.00"}) as d:  # 150,000 sats = 150.00 CAD
        _fund(d, 200_000)
        _tick(d)
        assert _policy_payouts(d, "sweep") == []
        d.actor.policy["max_payout_cad"] = ledger.Decimal("500.00")
        _tick(d)
        assert len(_policy_payouts(d, "sweep")) == 1


def test_a_sweep_to_the_treasury_or_another_network_is_a_policy_error(home):
    with _desk(home, {}) as d:
        with d.db.bind_ctx([PayoutAddress]):
            ours = PayoutAddress.select().first().address
    with _desk(home, {**SWEEP, "sweep_to": ours}) as d:
        assert "is an address of the treasury itself" in d.actor.policy_error
        assert d.actor.health()[0] == "degraded"
    with _desk(home, {**SWEEP, "sweep_to": "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"}) as d:
        assert "not an address of the regtest network" in d.actor.policy_error


# -- revenue shares ------------------------------------------------------------------------------

def _sales(d):
    """BusinessMgr's invoices: 1,500,000 sats of December 2026 sales, others outside it or unsold."""
    with d.db.bind_ctx(sales_models.TABLES):
        ensure_tables(d.db, sales_models.TABLES)
    rows = [  # (paid_at, due_sats, items, vended)
        (T((2026, 12, 1, 0, 0, 0)), 1_000_000, 2, 2),
        (T((2026, 12, 31, 23, 59, 59)), 600_000, 2, 1),     # one item of two dispensed: 300,000
        (T((2026, 12, 10, 0, 0, 0)), 200_000, 1, 0),        # a failed vend: no sale
        (T((2026, 12, 15, 0, 0, 0)), 200_000, 1, 1),
        (T((2026, 11, 30, 23, 59, 59)), 900_000, 1, 1),     # November
        (T((2027, 1, 1, 0, 0, 0)), 400_000, 1, 1),          # January
    ]
    with d.db.bind_ctx(sales_models.TABLES):
        for n, (paid, due, items, vended) in enumerate(rows):
            sales_models.SalesInvoice.create(mode="invoice", machine="vm1", slot=1, product="club-mate",
                                             price_cents=300, items=items, due_sats=due, address=f"addr{n}",
                                             state="vended" if vended else "failed", created=paid - 60,
                                             expires=paid + 900, paid_at=paid, vended=vended)


SHARES = {"shares": {ALICE_SHARE: "10%", BOB_SHARE: "2.5%", TINY_SHARE: "0.01%"}}


def test_shares_of_last_months_sales_are_requested_once_per_month_across_restarts(home):
    with _desk(home, SHARES) as d:
        _sales(d)
        with d.db.bind_ctx(ledger.MODELS):
            assert ledger.month_sales_sats(T((2026, 12, 1, 0, 0, 0)), T((2027, 1, 1, 0, 0, 0))) == 1_500_000
        _tick(d)
        shares = {p.destination: p for p in _policy_payouts(d, "share")}
        assert {a: p.sats for a, p in shares.items()} == {ALICE_SHARE: 150_000, BOB_SHARE: 37_500}
        assert all(p.state == "requested" and "2026-12" in p.reason for p in shares.values())
        # 0.01% is 150 sats, below the dust limit: not requested, not claimed (said in the log)
        with d.db.bind_ctx(ledger.MODELS):
            keys = {c.key for c in ledger.PayoutClaim.select()}
        assert keys == {f"share:2026-12:{ALICE_SHARE}", f"share:2026-12:{BOB_SHARE}"}
        _tick(d)
        d.restart()
        _tick(d)
        _tick(d)
        assert len(_policy_payouts(d, "share")) == 2
        # a share an admin cancels is not asked for again by itself (its claim is kept)
        assert _cmd(d, "cancel", "bob", payout=shares[BOB_SHARE].id, reason="paid in cash")["state"] == "cancelled"
        _tick(d)
        assert len(_policy_payouts(d, "share")) == 2
        # February: January's sales (400,000 sats), once
        d.clock.wall = T((2027, 2, 1, 0, 5, 0))
        _tick(d)
        _tick(d)
        january = [p for p in _policy_payouts(d, "share") if "2027-01" in p.reason]
        assert sorted(p.sats for p in january) == [10_000, 40_000]
        d.restart()
        _tick(d)
        assert len(_policy_payouts(d, "share")) == 4


def test_a_share_waits_for_a_fresh_price_then_is_requested(home):
    with _desk(home, {"shares": {ALICE_SHARE: "10%"}}) as d:
        _sales(d)
        d.rt.send("price.stale", {"reason": "sources disagree", "fresh": 1, "needed": 2, "sources": []},
                  sender="price_notifier")
        d.rt.advance(desk_module.POLICY_EVERY)
        assert _policy_payouts(d, "share") == []
        _tick(d)
        assert [p.sats for p in _policy_payouts(d, "share")] == [150_000]


# -- the settings --------------------------------------------------------------------------------

@pytest.mark.parametrize("section, error", [
    ({"sweep_to": COLD}, "sweep_to needs sweep_above_sats above 0"),
    ({"sweep_above_sats": 10}, "need sweep_to"),
    ({**SWEEP, "sweep_keep_sats": 200_000}, "sweep_keep_sats must be at most sweep_above_sats"),
    ({**SWEEP, "sweep_above_sats": -1}, "sweep_above_sats must be a whole number of sats"),
    ({**SWEEP, "sweep_keep_sats": 1.5}, "sweep_keep_sats must be a whole number of sats"),
    ({**SWEEP, "allowlist": [ALICE_SHARE]}, f"sweep_to {COLD} is not on the [payouts] allowlist"),
    ({"shares": {ALICE_SHARE: "10"}}, "a percentage as a string"),
    ({"shares": {ALICE_SHARE: 10}}, "a percentage as a string"),
    ({"shares": {ALICE_SHARE: "0%"}}, "above 0% and at most 100%"),
    ({"shares": {ALICE_SHARE: "101%"}}, "above 0% and at most 100%"),
    ({"shares": {ALICE_SHARE: "1.001%"}}, "at most 2 decimals"),
    ({"shares": {ALICE_SHARE: "ten%"}}, "is not a percentage"),
    ({"shares": {ALICE_SHARE: "60%", BOB_SHARE: "40.5%"}}, "add up to 100.5%, more than 100%"),
    ({"shares": {ALICE_SHARE: "10%"}, "allowlist": [BOB_SHARE]}, f"{ALICE_SHARE} is not on the [payouts] allowlist"),
    ({"sweep": COLD}, "unknown settings ['sweep']"),
])
def test_bad_policy_settings_are_refused_with_the_reason(section, error):
    with pytest.raises(ConfigError) as e:
        ledger.settings(section)
    assert error in str(e.value)


def test_good_policy_settings_and_the_config_schema():
    out = ledger.settings({**SWEEP, **SHARES, "allowlist": [COLD, ALICE_SHARE, BOB_SHARE, TINY_SHARE]})
    assert out["shares"][BOB_SHARE] == ledger.Decimal("2.5") and out["sweep_keep_sats"] == 50_000
    check({"payouts": {**SWEEP, **SHARES}}, CONFIG, "config.toml")
    with pytest.raises(ConfigError, match="sweep_above_sats"):
        check({"payouts": {"sweep_above_sats": "lots"}}, CONFIG, "config.toml")
    with pytest.raises(ConfigError, match="shares"):
        check({"payouts": {"shares": {ALICE_SHARE: 10}}}, CONFIG, "config.toml")
