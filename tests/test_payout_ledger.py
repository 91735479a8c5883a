"""The payout books (actors/payout_mgr/ledger.py, issue 13 items 2 to 4) on SQLite and PostgreSQL:
the policy's limits, approvals, the claims that keep a coin and an invoice to one payout, states."""

from __future__ import annotations

import threading
from decimal import Decimal

import pytest

from actors.db import connect, ensure_tables
from actors.payout_mgr import ledger
from actors.payout_mgr.ledger import Payout, PayoutHistory, PayoutRefused
from proto.errors import ConfigError

RATE = Decimal("100000")  # CAD per BTC: 1,000 sats = 1.00 CAD
DEST = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"


class Clock:
    def __init__(self):
        self.now = 1_800_000_000

    def __call__(self):
        return self.now


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'payouts.sqlite3'}"
        return
    from tests.harness import pg_schema
    with pg_schema("payouts") as url:
        yield url


@pytest.fixture
def books(db_url):
    database = connect(db_url)
    ledger.db.initialize(database)
    ensure_tables(database, ledger.MODELS)
    yield database
    database.close()


@pytest.fixture
def clock():
    return Clock()


def _policy(**kw):
    return ledger.settings(kw)


def _request(policy, clock, sats=10_000, by="admin", **kw):
    return ledger.request(policy, kind=kw.pop("kind", "manual"), destination=kw.pop("destination", DEST), sats=sats,
                          rate=kw.pop("rate", RATE), rate_as_of=clock(), reason=kw.pop("reason", "a test"), by=by,
                          clock=clock, **kw)


def test_a_request_records_who_asked_why_and_its_cad_value(books, clock):
    p = _request(_policy(), clock, sats=12_345, reason="refund of a failed vend")
    assert (p.state, p.requested_by, p.reason, p.cad_cents, p.rate) == (
        "requested", "admin", "refund of a failed vend", 1235, "100000")  # 12.345 CAD rounded up
    assert [h.state for h in PayoutHistory.select()] == ["requested"]


@pytest.mark.parametrize("kw, reason", [
    ({"sats": 0}, "above 0"),
    ({"sats": 1.5}, "whole number"),
    ({"reason": "  "}, "say why"),
    ({"rate": None}, "no fresh BTC/CAD price"),
    ({"kind": "refund"}, "names its invoice"),
    ({"kind": "gift"}, "unknown kind"),
])
def test_bad_requests_are_refused_with_the_reason(books, clock, kw, reason):
    with pytest.raises(PayoutRefused, match=reason):
        _request(_policy(), clock, **kw)
    assert Payout.select().count() == 0


def test_the_per_payout_and_daily_limits_in_cad(books, clock):
    policy = _policy(max_payout_cad="100.00", daily_limit_cad="250.00")
    with pytest.raises(PayoutRefused, match="100.01 CAD is above the per-payout limit of 100.00"):
        _request(policy, clock, sats=100_001)
    first = _request(policy, clock, sats=100_000)
    _request(policy, clock, sats=100_000)
    with pytest.raises(PayoutRefused, match="bring the last 24 hours' payouts to 250.01 CAD"):
        _request(policy, clock, sats=50_001)
    ledger.cancel(first.id, "admin", "changed my mind", clock=clock)  # a cancelled one frees its share
    _request(policy, clock, sats=50_001)
    clock.now += 86_400  # a rolling 24 hours
    _request(policy, clock, sats=100_000)


def test_the_allowlist(books, clock):
    policy = _policy(allowlist=["bcrt1qsomewhereelse"])
    with pytest.raises(PayoutRefused, match="not on the \\[payouts\\] allowlist"):
        _request(policy, clock)


def test_an_invoice_is_refunded_once_unless_its_refund_ended_unpaid(books, clock):
    policy = _policy()
    first = _request(policy, clock, kind="refund", invoice="inv-1")
    with pytest.raises(PayoutRefused, match="invoice inv-1's refund is already taken by payout"):
        _request(policy, clock, kind="refund", invoice="inv-1")
    assert Payout.select().count() == 1  # the refused one left nothing behind
    ledger.cancel(first.id, "admin", "wrong address", clock=clock)
    again = _request(policy, clock, kind="refund", invoice="inv-1")
    assert again.id != first.id


def test_approvals_four_eyes_and_once_each(books, clock):
    policy = _policy(approvals=2)
    p = _request(policy, clock, by="alice")
    with pytest.raises(PayoutRefused, match="cannot approve their own"):
        ledger.decide(p.id, "alice", "approve", policy, clock=clock)
    assert ledger.decide(p.id, "bob", "approve", policy, clock=clock)[1] is False
    with pytest.raises(PayoutRefused, match="bob has decided on payout"):
        ledger.decide(p.id, "bob", "approve", policy, clock=clock)
    assert ledger.decide(p.id, "carol", "approve", policy, clock=clock)[1] is True


def test_a_rejection_cancels_and_releases(books, clock):
    policy = _policy()
    p = _request(policy, clock, kind="refund", invoice="inv-2", by="alice")
    ledger.decide(p.id, "bob", "reject", policy, reason="not owed", clock=clock)
    p = Payout.get_by_id(p.id)
    assert (p.state, p.state_reason) == ("cancelled", "rejected by bob: not owed")
    _request(policy, clock, kind="refund", invoice="inv-2")


def test_two_payouts_never_claim_the_same_output(books, clock):
    policy = _policy(approvals=0)
    a, b = _request(policy, clock), _request(policy, clock)
    ledger.attach(a.id, psbt_b64="cHNidP8=", txid="aa" * 32, inputs=["11" * 32 + ":0", "22" * 32 + ":1"], fee=300,
                  vsize=150, change_sats=1000, by="payout_mgr", clock=clock)
    with pytest.raises(PayoutRefused, match="output 2{64}:1 is already taken by payout"):
        ledger.attach(b.id, psbt_b64="cHNidP8=", txid="bb" * 32, inputs=["33" * 32 + ":0", "22" * 32 + ":1"],
                      fee=300, vsize=150, change_sats=1000, by="payout_mgr", clock=clock)
    assert Payout.get_by_id(b.id).state == "requested"  # nothing of b's attempt was kept
    assert ledger.claimed_outpoints() == {"11" * 32 + ":0", "22" * 32 + ":1"}
    ledger.chain_state(a.id, "invalidated", "payout_mgr", "input spent elsewhere", clock=clock)
    assert ledger.claimed_outpoints() == set()


def test_two_writers_racing_for_one_output_one_wins(books, clock):
    """Two writers at once, each on its own connection (peewee opens one per thread): exactly
    one gets the coin, the other a refusal naming the winner."""
    policy = _policy(approvals=0)
    ids = [_request(policy, clock).id for _ in range(2)]
    results, barrier = {}, threading.Barrier(2)

    def attach(i):
        barrier.wait()
        try:
            ledger.attach(ids[i], psbt_b64="cHNidP8=", txid=f"{i}" * 64, inputs=["44" * 32 + ":0"], fee=1,
                          vsize=1, change_sats=0, by="payout_mgr", clock=clock)
            results[i] = "won"
        except PayoutRefused as exc:
            results[i] = str(exc)
        finally:
            books.close()  # this thread's connection
    threads = [threading.Thread(target=attach, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r == "won" for r in results.values()) == [False, True], results
    loser = next(r for r in results.values() if r != "won")
    assert "already taken by payout" in loser
    assert Payout.select().where(Payout.state == "awaiting_signatures").count() == 1


def test_states_from_signatures_to_confirmed_and_a_reorg(books, clock):
    policy = _policy(approvals=0)
    p = _request(policy, clock)
    ledger.attach(p.id, psbt_b64="cHNidP8=", txid="cc" * 32, inputs=["55" * 32 + ":0"], fee=300, vsize=150,
                  change_sats=0, by="payout_mgr", clock=clock)
    ledger.add_signatures(p.id, psbt_b64="cHNidP8=", fingerprints=["0a0b0c0d"], identity="alice", complete=False,
                          clock=clock)
    ledger.add_signatures(p.id, psbt_b64="cHNidP8=", fingerprints=["0a0b0c0d"], identity="bob", complete=False,
                          clock=clock)  # the same key again: still one signer
    assert ledger.PayoutSignature.select().count() == 1
    ledger.finalized(p.id, "00", "payout_mgr", clock=clock)
    p = Payout.get_by_id(p.id)
    assert p.state == "signed"
    with pytest.raises(PayoutRefused, match="once signed, spend one of its inputs elsewhere"):
        ledger.cancel(p.id, "admin", "too late", clock=clock)
    assert ledger.chain_state(p.id, "broadcast", "payout_mgr", "node accepted", clock=clock).state == "broadcast"
    assert ledger.chain_state(p.id, "broadcast", "payout_mgr", "again", clock=clock) is None  # once
    assert ledger.chain_state(p.id, "confirmed", "payout_mgr", "1 confirmation", clock=clock).state == "confirmed"
    assert ledger.chain_state(p.id, "broadcast", "payout_mgr", "reorged out", clock=clock).state == "broadcast"
    assert [h.state for h in PayoutHistory.select().order_by(PayoutHistory.id)] == [
        "requested", "awaiting_signatures", "signed", "broadcast", "confirmed", "broadcast"]


def test_open_requests_expire_and_release_their_claims(books, clock):
    policy = _policy(open_hours=2, approvals=0)
    p = _request(policy, clock, kind="refund", invoice="inv-3")
    ledger.attach(p.id, psbt_b64="cHNidP8=", txid="dd" * 32, inputs=["66" * 32 + ":0"], fee=1, vsize=1,
                  change_sats=0, by="payout_mgr", clock=clock)
    clock.now += 2 * 3600 - 1
    assert ledger.expire(clock=clock) == []
    clock.now += 1
    assert ledger.expire(clock=clock) == [p.id]
    assert Payout.get_by_id(p.id).state == "expired" and ledger.claimed_outpoints() == set()
    # its PSBT went out: co-signers may still complete it, so the invoice stays its own (found by
    # review: releasing it let a second refund of the invoice be paid beside the first) ...
    with pytest.raises(PayoutRefused, match=f"invoice inv-3's refund is already taken by payout {p.id}"):
        _request(policy, clock, kind="refund", invoice="inv-3")
    # ... until its transaction can no longer confirm (an input spent by another transaction)
    assert ledger.dead(p.id, "payout_mgr", "an input was spent by " + "ee" * 32, clock=clock).id == p.id
    assert ledger.dead(p.id, "payout_mgr", "again", clock=clock) is None
    _request(policy, clock, kind="refund", invoice="inv-3")


def test_a_withdrawn_payout_completed_by_its_co_signers_is_recorded_paid(books, clock):
    policy = _policy(approvals=0)
    p = _request(policy, clock, kind="refund", invoice="inv-5")
    ledger.attach(p.id, psbt_b64="cHNidP8=", txid="ab" * 32, inputs=["77" * 32 + ":0"], fee=1, vsize=1,
                  change_sats=0, by="payout_mgr", clock=clock)
    ledger.cancel(p.id, "alice", "not needed after all", clock=clock)
    assert ledger.chain_state(p.id, "confirmed", "payout_mgr", "confirmed at height 300", clock=clock).state == \
        "confirmed"
    assert [c.key for c in ledger.PayoutClaim.select()] == ["invoice:inv-5"]  # paid: once, for good
    with pytest.raises(PayoutRefused, match="already taken"):
        _request(policy, clock, kind="refund", invoice="inv-5")


@pytest.mark.parametrize("section, reason", [
    ({"max_payout_cad": "10.001"}, "at most 2 decimals"),
    ({"daily_limit_cad": "lots"}, "is not an amount"),
    ({"approvals": -1}, "approvals must be a whole number"),
    ({"min_feerate": 5.0, "max_feerate": 2.0}, "min_feerate <= max_feerate"),
    ({"allowlist": "bc1q"}, "list of addresses"),
    ({"max_payuot_cad": "1"}, "unknown settings"),
])
def test_the_policy_is_checked(section, reason):
    with pytest.raises(ConfigError, match=reason):
        ledger.settings(section)


def test_an_abandoned_bump_that_confirms_anyway_is_the_payment(books, clock):
    """Found by review: a bump cancelled while waiting for signatures gave its claims back to the
    original; completed by the co-signers anyway, it confirmed, and the books could not record it
    (confirmed was not a state a cancelled payout could reach), leaving the original 'broadcast'."""
    policy = _policy(approvals=0)
    o = _request(policy, clock, kind="refund", invoice="inv-9")
    ledger.attach(o.id, psbt_b64="cHNidP8=", txid="a1" * 32, inputs=["88" * 32 + ":0"], fee=150, vsize=150,
                  change_sats=1000, by="payout_mgr", clock=clock)
    ledger.add_signatures(o.id, psbt_b64="cHNidP8=", fingerprints=["0a0b0c0d"], identity="alice", complete=True,
                          clock=clock)
    ledger.finalized(o.id, "00", "payout_mgr", clock=clock)
    ledger.chain_state(o.id, "broadcast", "payout_mgr", "the node took it", clock=clock)
    p = ledger.replacement(o.id, psbt_b64="cHNidP8=", txid="b2" * 32, fee=600, vsize=150, change_sats=550,
                           feerate=Decimal("4"), by="bob", policy=policy, clock=clock)
    ledger.cancel(p.id, "bob", "the original will do", clock=clock)
    assert {c.key: c.payout for c in ledger.PayoutClaim.select()}["invoice:inv-9"] == o.id
    assert ledger.chain_state(p.id, "confirmed", "payout_mgr", "confirmed at height 301", clock=clock) is not None
    moved = ledger.settle(p.id, "payout_mgr", clock=clock)
    assert [(q.id, q.state) for q in moved] == [(o.id, "replaced")]
    assert {c.key: c.payout for c in ledger.PayoutClaim.select()}["invoice:inv-9"] == p.id
    with pytest.raises(PayoutRefused, match="already taken"):
        _request(policy, clock, kind="refund", invoice="inv-9")
