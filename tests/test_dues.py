"""The Reporter's dues arithmetic (actors/reporter): pure functions, no database, no bus, no clock.

Example tests name each edge where member systems break (month ends, 31st and
29 February joiners, a plan change in mid-period, a payment on the last day of
the grace, partial payments and credit, leaving and rejoining, quarter and
year plans); their expected dates and amounts are worked out by hand in the
test, never taken from the code. Property tests (hypothesis) check the laws
that hold for any facts: money is conserved, paid-through only moves forward
with more money, status only worsens with time alone, transitions replay to
the status of every day, and the schedule never skips or repeats a month.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from actors.reporter.business import Sale, active_members, joins_and_leaves, monthly_income, retention
from actors.reporter.dues import (
    Adjustment, DuesError, GroupChange, MemberHistory, Payment, PlanChange, Plans, PlanVersion, Status, Transition,
    add_months, member_state, schedule, status, transitions, upcoming_charge)
from actors.reporter.feeds import Outage, judge, publishable
from actors.reporter.groups import KEYHOLDER_STATUSES, GroupRule, groups_on, members_of

D = date
DAY = timedelta(days=1)

REGULAR = PlanVersion("regular", 4000, "month", grace_days=30, term_days=7)
STUDENT = PlanVersion("student", 2000, "month", grace_days=30, term_days=7)
QUARTER = PlanVersion("quarterly", 11000, "quarter", grace_days=45, term_days=14)
YEAR = PlanVersion("yearly", 40000, "year", grace_days=60, term_days=14)
PLANS = Plans((REGULAR, STUDENT, QUARTER, YEAR))


def member(joined, plan="regular", *, changes=(), pay=(), adjust=(), leaves=(), rejoins=(), handle="ann"):
    """A history: ``pay`` is (day, cents) pairs credited that day (cash), or Payment objects."""
    payments = tuple(p if isinstance(p, Payment) else Payment(p[0], p[1], method="cash") for p in pay)
    return MemberHistory(handle, joined, (PlanChange(joined, plan), *(PlanChange(d, n) for d, n in changes)),
                         payments, tuple(Adjustment(d, c) for d, c in adjust), tuple(leaves), tuple(rejoins))


def starts(history, until, plans=PLANS):
    return [p.start for p in schedule(history, plans, until)]


# -- the schedule: anchor days, month ends, leap days ---------------------------------------------

def test_a_31st_joiner_is_charged_on_short_months_last_day_and_back_on_the_31st():
    h = member(D(2023, 1, 31))
    assert starts(h, D(2024, 3, 31)) == [
        D(2023, 1, 31), D(2023, 2, 28), D(2023, 3, 31), D(2023, 4, 30), D(2023, 5, 31), D(2023, 6, 30),
        D(2023, 7, 31), D(2023, 8, 31), D(2023, 9, 30), D(2023, 10, 31), D(2023, 11, 30), D(2023, 12, 31),
        D(2024, 1, 31), D(2024, 2, 29), D(2024, 3, 31)]


def test_a_period_ends_the_day_before_the_next_starts():
    ps = schedule(member(D(2023, 1, 31)), PLANS, D(2023, 4, 30))
    assert [(p.start, p.end) for p in ps] == [
        (D(2023, 1, 31), D(2023, 2, 27)), (D(2023, 2, 28), D(2023, 3, 30)),
        (D(2023, 3, 31), D(2023, 4, 29)), (D(2023, 4, 30), D(2023, 5, 30))]


def test_a_30th_joiner_in_february_of_a_leap_year():
    assert starts(member(D(2024, 1, 30)), D(2024, 4, 30)) == [D(2024, 1, 30), D(2024, 2, 29), D(2024, 3, 30),
                                                             D(2024, 4, 30)]


def test_a_29_february_joiner_on_a_year_plan_pays_on_28_february_in_common_years():
    h = member(D(2024, 2, 29), "yearly")
    assert starts(h, D(2028, 12, 31)) == [D(2024, 2, 29), D(2025, 2, 28), D(2026, 2, 28), D(2027, 2, 28),
                                         D(2028, 2, 29)]


def test_a_29_february_joiner_on_a_month_plan_keeps_the_29th():
    h = member(D(2024, 2, 29))
    assert starts(h, D(2025, 3, 29)) == [
        D(2024, 2, 29), D(2024, 3, 29), D(2024, 4, 29), D(2024, 5, 29), D(2024, 6, 29), D(2024, 7, 29),
        D(2024, 8, 29), D(2024, 9, 29), D(2024, 10, 29), D(2024, 11, 29), D(2024, 12, 29), D(2025, 1, 29),
        D(2025, 2, 28), D(2025, 3, 29)]


def test_a_quarter_plan_from_the_30th_of_november():
    h = member(D(2025, 11, 30), "quarterly")
    assert starts(h, D(2026, 12, 1)) == [D(2025, 11, 30), D(2026, 2, 28), D(2026, 5, 30), D(2026, 8, 30),
                                        D(2026, 11, 30)]
    ps = schedule(h, PLANS, D(2026, 3, 1))
    assert [p.dues_cents for p in ps] == [11000, 11000]
    assert ps[0].end == D(2026, 2, 27)


def test_a_year_plan_from_31_march():
    h = member(D(2023, 3, 31), "yearly")
    ps = schedule(h, PLANS, D(2025, 12, 31))
    assert [(p.start, p.end, p.dues_cents) for p in ps] == [
        (D(2023, 3, 31), D(2024, 3, 30), 40000), (D(2024, 3, 31), D(2025, 3, 30), 40000),
        (D(2025, 3, 31), D(2026, 3, 30), 40000)]


# -- plan changes ---------------------------------------------------------------------------------

def test_a_plan_change_in_mid_period_applies_from_the_next_period_start():
    h = member(D(2025, 1, 10), changes=[(D(2025, 2, 20), "student")])
    ps = schedule(h, PLANS, D(2025, 4, 10))
    assert [(p.start, p.dues_cents) for p in ps] == [
        (D(2025, 1, 10), 4000), (D(2025, 2, 10), 4000), (D(2025, 3, 10), 2000), (D(2025, 4, 10), 2000)]


def test_a_plan_change_on_a_period_start_applies_to_that_period():
    h = member(D(2025, 1, 10), changes=[(D(2025, 3, 10), "student")])
    assert [p.dues_cents for p in schedule(h, PLANS, D(2025, 3, 10))] == [4000, 4000, 2000]


def test_a_new_price_of_the_same_plan_in_mid_period_applies_from_the_next_start():
    plans = Plans((REGULAR, PlanVersion("regular", 4500, "month", 30, effective=D(2025, 2, 1))))
    h = member(D(2025, 1, 15))
    # The period of 15 January to 14 February holds the new price's first day: it keeps 40.00.
    assert [p.dues_cents for p in schedule(h, plans, D(2025, 3, 15))] == [4000, 4500, 4500]


def test_switching_from_month_to_year_keeps_the_anchor_day():
    h = member(D(2025, 1, 31), changes=[(D(2025, 3, 5), "yearly")])
    ps = schedule(h, PLANS, D(2027, 12, 31))
    assert [(p.start, p.end, p.dues_cents) for p in ps] == [
        (D(2025, 1, 31), D(2025, 2, 27), 4000), (D(2025, 2, 28), D(2025, 3, 30), 4000),
        (D(2025, 3, 31), D(2026, 3, 30), 40000), (D(2026, 3, 31), D(2027, 3, 30), 40000),
        (D(2027, 3, 31), D(2028, 3, 30), 40000)]


# -- statuses, paid-through, balance --------------------------------------------------------------

def test_the_statuses_of_a_member_who_never_pays():
    # Joined 1 March 2025: due 1-7 March, overdue 8 March to 6 April (30 days), lapsed from 7 April.
    h = member(D(2025, 3, 1))
    assert status(h, PLANS, D(2025, 2, 28)) is None
    assert status(h, PLANS, D(2025, 3, 1)) == Status.DUE
    assert status(h, PLANS, D(2025, 3, 7)) == Status.DUE
    assert status(h, PLANS, D(2025, 3, 8)) == Status.OVERDUE
    assert status(h, PLANS, D(2025, 4, 6)) == Status.OVERDUE
    assert status(h, PLANS, D(2025, 4, 7)) == Status.LAPSED
    assert transitions(h, PLANS, D(2025, 1, 1), D(2025, 12, 31)) == [
        Transition("ann", D(2025, 3, 1), None, Status.DUE),
        Transition("ann", D(2025, 3, 8), Status.DUE, Status.OVERDUE),
        Transition("ann", D(2025, 4, 7), Status.OVERDUE, Status.LAPSED)]


def test_prepaid_then_current_then_due():
    h = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 8000)])
    assert status(h, PLANS, D(2025, 3, 31)) == Status.PREPAID  # March and April paid
    assert status(h, PLANS, D(2025, 4, 1)) == Status.CURRENT  # April paid, May not
    assert status(h, PLANS, D(2025, 4, 30)) == Status.CURRENT
    assert status(h, PLANS, D(2025, 5, 1)) == Status.DUE
    s = member_state(h, PLANS, D(2025, 4, 15))
    assert (s.paid_through, s.balance_cents, s.next_charge.start) == (D(2025, 4, 30), 0, D(2025, 5, 1))
    assert s.summary() == {"handle": "ann", "as_of": "2025-04-15", "status": "current",
                           "paid_through": "2025-04-30", "balance_cents": 0, "next_charge": "2025-05-01",
                           "next_charge_cents": 4000}


def test_a_partial_payment_leaves_the_period_unpaid_with_the_rest_as_credit():
    h = member(D(2025, 3, 1), pay=[(D(2025, 3, 2), 2500)])
    s = member_state(h, PLANS, D(2025, 3, 10))
    assert (s.status, s.paid_through, s.balance_cents) == (Status.OVERDUE, D(2025, 2, 28), -1500)
    h2 = member(D(2025, 3, 1), pay=[(D(2025, 3, 2), 2500), (D(2025, 3, 12), 1500)])
    s = member_state(h2, PLANS, D(2025, 3, 12))
    assert (s.status, s.paid_through, s.balance_cents) == (Status.CURRENT, D(2025, 3, 31), 0)


def test_credit_is_carried_forward_period_by_period():
    h = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 10000)])  # 2.5 months of 40.00
    assert (member_state(h, PLANS, D(2025, 3, 1)).paid_through, member_state(h, PLANS, D(2025, 3, 1)).balance_cents) \
        == (D(2025, 4, 30), 6000)
    s = member_state(h, PLANS, D(2025, 5, 1))
    assert (s.status, s.paid_through, s.balance_cents) == (Status.DUE, D(2025, 4, 30), -2000)
    h2 = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 10000), (D(2025, 5, 3), 2000)])
    s = member_state(h2, PLANS, D(2025, 5, 3))
    assert (s.status, s.paid_through, s.balance_cents) == (Status.CURRENT, D(2025, 5, 31), 0)


def test_a_payment_on_the_last_day_of_grace_keeps_the_member_out_of_lapsed():
    # Year plan from 1 June 2025: due until 14 June, overdue 15 June to 13 August (60 days),
    # lapsed from 14 August. 13 August is the last day of the grace.
    on_time = member(D(2025, 6, 1), "yearly", pay=[(D(2025, 8, 13), 40000)])
    assert status(on_time, PLANS, D(2025, 8, 12)) == Status.OVERDUE
    assert status(on_time, PLANS, D(2025, 8, 13)) == Status.CURRENT
    assert Status.LAPSED not in {t.new for t in transitions(on_time, PLANS, D(2025, 5, 1), D(2026, 1, 1))}
    late = member(D(2025, 6, 1), "yearly", pay=[(D(2025, 8, 15), 40000)])
    assert transitions(late, PLANS, D(2025, 8, 1), D(2025, 9, 1)) == [
        Transition("ann", D(2025, 8, 14), Status.OVERDUE, Status.LAPSED),
        Transition("ann", D(2025, 8, 15), Status.LAPSED, Status.CURRENT)]


def test_adjustments_credit_and_charge():
    h = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 4000)], adjust=[(D(2025, 3, 5), -1000), (D(2025, 3, 9), 1000)])
    assert member_state(h, PLANS, D(2025, 3, 6)).balance_cents == -1000
    assert status(h, PLANS, D(2025, 3, 6)) == Status.DUE
    assert status(h, PLANS, D(2025, 3, 9)) == Status.CURRENT


def test_a_payment_reorged_out_is_reversed_from_the_day_we_learn_it_never_before():
    # Paid on 2 March (made that day), reorged out on 20 March: a reversing adjustment that day.
    h = member(D(2025, 3, 1), pay=[Payment(D(2025, 3, 3), 4000, made=D(2025, 3, 2), key="tx:0")],
               adjust=[(D(2025, 3, 20), -4000)])
    assert transitions(h, PLANS, D(2025, 2, 28), D(2025, 3, 31)) == [
        Transition("ann", D(2025, 3, 1), None, Status.DUE),
        Transition("ann", D(2025, 3, 2), Status.DUE, Status.CURRENT),
        Transition("ann", D(2025, 3, 20), Status.CURRENT, Status.OVERDUE)]
    assert member_state(h, PLANS, D(2025, 3, 20)).balance_cents == -4000


def test_a_quarter_plan_statuses_use_its_term_and_grace():
    # 14 days' term and 45 days' grace: due 1-14 Jan, overdue 15 Jan - 28 Feb, lapsed from 1 March.
    h = member(D(2025, 1, 1), "quarterly")
    days = [t.on for t in transitions(h, PLANS, D(2024, 12, 31), D(2025, 6, 1))]
    assert days == [D(2025, 1, 1), D(2025, 1, 15), D(2025, 3, 1)]


# -- leaving and rejoining ------------------------------------------------------------------------

def test_no_charges_while_left_and_a_rejoin_restarts_the_schedule():
    h = member(D(2025, 1, 15), leaves=[D(2025, 3, 20)], rejoins=[D(2025, 6, 3)])
    assert starts(h, D(2025, 8, 31)) == [D(2025, 1, 15), D(2025, 2, 15), D(2025, 3, 15), D(2025, 6, 3),
                                        D(2025, 7, 3), D(2025, 8, 3)]
    assert status(h, PLANS, D(2025, 4, 1)) == Status.LEFT
    assert member_state(h, PLANS, D(2025, 5, 31)).balance_cents == -12000


def test_a_leave_on_a_period_start_is_not_charged_for_that_period():
    h = member(D(2025, 1, 15), pay=[(D(2025, 1, 15), 8000)], leaves=[D(2025, 3, 15)])
    s = member_state(h, PLANS, D(2025, 6, 1))
    assert (s.status, s.balance_cents, s.charged_cents) == (Status.LEFT, 0, 8000)


def test_rejoining_inside_the_last_paid_period_continues_the_old_schedule():
    h = member(D(2025, 1, 15), pay=[(D(2025, 1, 15), 12000)], leaves=[D(2025, 3, 20)], rejoins=[D(2025, 4, 2)])
    assert starts(h, D(2025, 6, 30)) == [D(2025, 1, 15), D(2025, 2, 15), D(2025, 3, 15), D(2025, 4, 15),
                                        D(2025, 5, 15), D(2025, 6, 15)]
    assert status(h, PLANS, D(2025, 4, 2)) == Status.CURRENT  # paid until 14 April, no new charge
    assert status(h, PLANS, D(2025, 4, 15)) == Status.DUE


def test_rejoining_on_the_last_paid_day_or_the_day_after_charges_the_next_day_once():
    # makeradmin charged nothing when a subscription started on the day access ended (#556).
    for rejoin in (D(2025, 4, 14), D(2025, 4, 15)):
        h = member(D(2025, 1, 15), pay=[(D(2025, 1, 15), 12000)], leaves=[D(2025, 3, 20)], rejoins=[rejoin])
        ps = schedule(h, PLANS, D(2025, 5, 20))
        assert [(p.start, p.dues_cents) for p in ps] == [
            (D(2025, 1, 15), 4000), (D(2025, 2, 15), 4000), (D(2025, 3, 15), 4000), (D(2025, 4, 15), 4000),
            (D(2025, 5, 15), 4000)]
        assert status(h, PLANS, D(2025, 4, 15)) == Status.DUE


def test_leaving_on_the_joined_day_charges_nothing():
    h = member(D(2025, 1, 15), leaves=[D(2025, 1, 15)])
    s = member_state(h, PLANS, D(2025, 2, 1))
    assert (s.status, s.charged_cents, s.balance_cents) == (Status.LEFT, 0, 0)
    assert transitions(h, PLANS, D(2025, 1, 1), D(2025, 2, 1)) == [Transition("ann", D(2025, 1, 15), None, Status.LEFT)]


def test_credit_and_arrears_follow_the_member_across_a_rejoin():
    paid_ahead = member(D(2025, 1, 1), pay=[(D(2025, 1, 1), 8000)], leaves=[D(2025, 1, 20)], rejoins=[D(2025, 5, 7)])
    s = member_state(paid_ahead, PLANS, D(2025, 5, 7))
    assert (s.status, s.paid_through, s.balance_cents) == (Status.CURRENT, D(2025, 6, 6), 0)
    owing = member(D(2025, 1, 1), leaves=[D(2025, 1, 20)], rejoins=[D(2025, 5, 7)])
    # January was never paid: its grace ended on 7 February, so the member comes back lapsed.
    assert status(owing, PLANS, D(2025, 5, 7)) == Status.LAPSED


def test_facts_that_do_not_describe_a_member_are_refused():
    with pytest.raises(DuesError):
        PlanVersion("x", 40.0, "month", 30)
    with pytest.raises(DuesError):
        PlanVersion("x", 4000, "week", 30)
    with pytest.raises(DuesError):
        Payment(D(2025, 1, 1), 40.0)
    with pytest.raises(DuesError):  # a timestamp compares wrongly with dates
        Payment(datetime(2025, 1, 1, 12, 0), 4000)
    with pytest.raises(DuesError):
        Payment(D(2025, 1, 1), True)
    with pytest.raises(DuesError):
        Payment(D(2025, 1, 1), 4000, made=D(2025, 1, 2))
    with pytest.raises(DuesError):
        member(D(2025, 1, 1), leaves=[D(2025, 2, 1)], rejoins=[D(2025, 1, 15)])
    with pytest.raises(DuesError):
        MemberHistory("ann", D(2025, 1, 1), (PlanChange(D(2025, 1, 2), "regular"),))
    with pytest.raises(DuesError):
        status(member(D(2025, 1, 1), "nosuchplan"), PLANS, D(2025, 1, 1))


# -- the feeds rule -------------------------------------------------------------------------------

def test_no_overdue_while_the_chain_feed_is_down_and_judged_as_of_the_right_day_after():
    h = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 4000)])  # April's dues are overdue from 8 April
    down = [Outage("chain", D(2025, 4, 5))]
    j = publishable(h, PLANS, down, D(2025, 3, 31), D(2025, 4, 10))
    assert [t.new for t in j.published] == [Status.DUE]
    assert [(t.on, t.new) for t in j.held] == [(D(2025, 4, 8), Status.OVERDUE)]
    assert j.judged_through == D(2025, 4, 4) and "chain" in j.reason  # 5 April on may still change
    back = [Outage("chain", D(2025, 4, 5), D(2025, 4, 11))]
    j2 = publishable(h, PLANS, back, j.judged_through, D(2025, 4, 12))
    assert [(t.on, t.new) for t in j2.published] == [(D(2025, 4, 8), Status.OVERDUE)]
    assert (j2.held, j2.judged_through) == ((), D(2025, 4, 12))


def test_a_payment_made_before_the_deadline_and_seen_after_the_outage_is_on_time():
    paid = Payment(credited=D(2025, 4, 12), cents=4000, made=D(2025, 4, 6), sats=5000, key="tx:0")
    h = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 4000), paid])
    back = [Outage("chain", D(2025, 4, 5), D(2025, 4, 11))]
    j = publishable(h, PLANS, back, D(2025, 4, 7), D(2025, 4, 12))
    assert j.published == () and j.held == ()  # never overdue: paid on 6 April, inside the term
    assert status(h, PLANS, D(2025, 4, 9)) == Status.CURRENT


def test_a_seen_but_unconfirmed_payment_holds_back_a_lapse():
    pending = Payment(credited=None, cents=4000, made=D(2025, 4, 6), key="tx:1")
    h = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 4000), pending])
    j = publishable(h, PLANS, [], D(2025, 4, 1), D(2025, 4, 10))
    assert [t.on for t in j.held] == [D(2025, 4, 8)] and "not credited" in j.reason
    assert member_state(h, PLANS, D(2025, 4, 10)).balance_cents == -4000  # pending counts nowhere


def test_a_price_outage_holds_and_a_held_transition_holds_everything_after_it():
    ts = [Transition("ann", D(2025, 4, 8), Status.DUE, Status.OVERDUE),
          Transition("ann", D(2025, 4, 9), Status.OVERDUE, Status.CURRENT)]
    j = judge(ts, [Outage("price", D(2025, 4, 8), D(2025, 4, 20))], [], D(2025, 4, 15))
    assert (j.published, j.held, j.judged_through) == ((), tuple(ts), D(2025, 4, 7))
    j = judge(ts, [Outage("price", D(2025, 4, 9), D(2025, 4, 20))], [], D(2025, 4, 15))
    assert (j.published, j.held, j.judged_through) == (tuple(ts[:1]), tuple(ts[1:]), D(2025, 4, 8))


def test_any_transition_during_an_ongoing_outage_waits_but_not_one_before_it():
    # Even one to a better status: a payment made on that day and seen late could make it prepaid.
    ts = [Transition("ann", D(2025, 3, 31), Status.DUE, Status.OVERDUE),
          Transition("ann", D(2025, 4, 8), Status.LAPSED, Status.CURRENT)]
    j = judge(ts, [Outage("chain", D(2025, 4, 1))], [], D(2025, 4, 9))
    assert (j.published, j.held) == (tuple(ts[:1]), tuple(ts[1:]))
    assert judge(ts, [Outage("chain", D(2025, 4, 1), D(2025, 4, 8))], [], D(2025, 4, 9)).published == tuple(ts)


def test_outages_without_a_healthy_day_between_them_count_as_one():
    # Chain down on the 2nd, price stale on the 3rd: on the 3rd, day 2 is not settled either.
    ts = [Transition("ann", D(2025, 4, 2), Status.LAPSED, Status.CURRENT)]
    j = judge(ts, [Outage("chain", D(2025, 4, 2), D(2025, 4, 2)), Outage("price", D(2025, 4, 3))], [],
              D(2025, 4, 3))
    assert (j.published, j.judged_through, j.reason) == ((), D(2025, 4, 1), "chain+price feed down since 2025-04-02")
    apart = [Outage("chain", D(2025, 4, 2), D(2025, 4, 2)), Outage("price", D(2025, 4, 4))]
    assert judge(ts, apart, [], D(2025, 4, 4)).published == tuple(ts)


def test_a_payment_seen_during_a_price_outage_and_valued_after_it_is_on_time():
    # Seen on 6 April while the price was stale: MemberData credits it on the 12th, valued then.
    h = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 4000),
                                   Payment(credited=D(2025, 4, 12), cents=4000, made=D(2025, 4, 6), key="t:0")])
    during = MemberHistory(h.handle, h.joined, h.plan_changes,
                           (h.payments[0], Payment(None, 4000, made=D(2025, 4, 6), key="t:0")))
    stale = Outage("price", D(2025, 4, 4), D(2025, 4, 11))
    j = publishable(during, PLANS, [Outage("price", D(2025, 4, 4))], D(2025, 3, 31), D(2025, 4, 10))
    assert [t.new for t in j.published] == [Status.DUE] and [t.new for t in j.held] == [Status.OVERDUE]
    j2 = publishable(h, PLANS, [stale], j.judged_through, D(2025, 4, 12))
    assert [(t.on, t.new) for t in j2.published] == [(D(2025, 4, 6), Status.CURRENT)]


# -- business reports -----------------------------------------------------------------------------

def test_monthly_income_by_method_and_by_machine_and_product():
    pays = [Payment(D(2025, 1, 31), 4000, "bitcoin", made=D(2025, 1, 30), sats=4400, key="a:0"),
            Payment(D(2025, 2, 1), 4000, "bitcoin", made=D(2025, 1, 31), sats=4500, key="b:0"),
            Payment(D(2025, 1, 5), 4000, "cash"), Payment(None, 4000, made=D(2025, 1, 6), sats=1)]
    sales = [Sale("vm1", "cola", 1500, 250, D(2025, 1, 2)), Sale("vm1", "cola", 1600, 250, D(2025, 1, 9)),
             Sale("vm2", "chips", 900, 150, D(2025, 2, 28))]
    income = monthly_income(pays, sales)
    assert list(income) == [D(2025, 1, 1), D(2025, 2, 1)]
    jan, feb = income[D(2025, 1, 1)], income[D(2025, 2, 1)]
    assert (jan.dues["bitcoin"].sats, jan.dues["bitcoin"].cents, jan.dues["cash"].cents) == (4400, 4000, 4000)
    assert (jan.sales[("vm1", "cola")].sats, jan.sales[("vm1", "cola")].cents) == (3100, 500)
    assert (jan.total.sats, jan.total.cents) == (7500, 8500)
    assert (feb.dues["bitcoin"].sats, feb.sales[("vm2", "chips")].cents) == (4500, 150)


def test_active_members_joins_leaves_and_retention():
    ann = member(D(2025, 1, 10), pay=[(D(2025, 1, 10), 40000)], handle="ann")  # paid 10 months ahead
    bob = member(D(2025, 1, 20), handle="bob")  # never pays: overdue from 27 January, lapsed from 26 February
    cy = member(D(2025, 2, 3), pay=[(D(2025, 2, 3), 40000)], leaves=[D(2025, 3, 4)], handle="cy")
    people = [ann, bob, cy]
    assert active_members(people, PLANS, D(2025, 1, 1), D(2025, 4, 15)) == {
        D(2025, 1, 1): 2, D(2025, 2, 1): 2, D(2025, 3, 1): 1, D(2025, 4, 1): 1}
    assert joins_and_leaves(people, D(2025, 1, 1), D(2025, 3, 31)) == {
        D(2025, 1, 1): (2, 0), D(2025, 2, 1): (1, 0), D(2025, 3, 1): (0, 1)}
    assert retention(people, PLANS, D(2025, 2, 28), D(2025, 3, 31)) == Fraction(1, 2)  # ann stays, cy left
    assert retention(people, PLANS, D(2024, 12, 31), D(2025, 3, 31)) is None


def test_a_reminder_is_for_the_next_uncovered_period_within_the_notice():
    h = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 4000)])  # March paid, April not
    assert upcoming_charge(member_state(h, PLANS, D(2025, 3, 24)), 7) is None
    soon = upcoming_charge(member_state(h, PLANS, D(2025, 3, 25)), 7)
    assert (soon.start, soon.dues_cents) == (D(2025, 4, 1), 4000)
    assert upcoming_charge(member_state(h, PLANS, D(2025, 4, 1)), 7) is None  # due now: no reminder
    ahead = member(D(2025, 3, 1), pay=[(D(2025, 3, 1), 8000)])
    assert upcoming_charge(member_state(ahead, PLANS, D(2025, 3, 28)), 7) is None  # April covered


def test_groups_explicit_and_by_rule():
    keys = (GroupChange(D(2025, 1, 5), "keys"), GroupChange(D(2025, 3, 1), "keys", member=False),
            GroupChange(D(2025, 2, 1), "laser"))
    ann = MemberHistory("ann", D(2025, 1, 1), (PlanChange(D(2025, 1, 1), "regular"),),
                        (Payment(D(2025, 1, 1), 40000, "cash"),), groups=keys)
    bob = MemberHistory("bob", D(2025, 1, 1), (PlanChange(D(2025, 1, 1), "regular"),),
                        groups=(GroupChange(D(2025, 1, 1), "keys"),))  # never pays: overdue from 8 January
    assert groups_on(ann, D(2025, 1, 4)) == frozenset()
    assert groups_on(ann, D(2025, 2, 10)) == {"keys", "laser"}
    assert groups_on(ann, D(2025, 3, 1)) == {"laser"}
    keyholders = GroupRule("keyholders", KEYHOLDER_STATUSES, "keys")
    assert members_of(keyholders, [ann, bob], PLANS, D(2025, 1, 7)) == ["ann", "bob"]
    assert members_of(keyholders, [ann, bob], PLANS, D(2025, 1, 8)) == ["ann"]
    assert members_of(keyholders, [ann, bob], PLANS, D(2025, 3, 2)) == []
    assert members_of(GroupRule("overdue", frozenset({Status.OVERDUE})), [ann, bob], PLANS, D(2025, 1, 8)) == ["bob"]


def test_the_core_loads_no_database_bus_or_scheduler():
    """Pure functions: importing them in a fresh interpreter loads no peewee, zmq, schedule or runtime."""
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys, actors.reporter.dues, actors.reporter.feeds, actors.reporter.business, "
            "actors.reporter.groups; print(' '.join(sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).resolve().parent.parent,
                         capture_output=True, text=True, check=True).stdout.split()
    assert "actors.reporter.groups" in out
    heavy = ("peewee", "zmq", "schedule", "psycopg2", "actors.runtime", "actors.db")
    assert [m for m in out if m.split(".")[0] in heavy or m in heavy] == []


# -- properties -----------------------------------------------------------------------------------

START, END = D(2020, 1, 1), D(2028, 12, 31)
days = st.dates(min_value=START, max_value=END)
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def plan_books(draw):
    versions = []
    for name in ("a", "b"):
        for effective in [date.min, *draw(st.lists(days, max_size=2))]:
            versions.append(PlanVersion(name, draw(st.integers(0, 12000)),
                                        draw(st.sampled_from(["month", "quarter", "year"])),
                                        draw(st.integers(0, 60)), effective, draw(st.integers(0, 14))))
    return Plans(tuple(versions))


@st.composite
def cases(draw, *, with_credits=True, with_leaves=True):
    """(plans, history, as_of): dates drawn near the member's life and on its period starts, amounts
    often whole numbers of a plan's dues, leaves and rejoins often close together, so the edges
    (a change on a period start, a rejoin inside a paid period, credit that exactly covers) occur."""
    plans = draw(plan_books())
    joined = draw(st.dates(min_value=START, max_value=D(2026, 12, 31)))
    after = st.one_of(st.dates(min_value=joined, max_value=END),
                      st.builds(lambda k: add_months(joined, k), st.integers(0, 36)))
    changes = [PlanChange(joined, draw(st.sampled_from("ab")))]
    changes += [PlanChange(d, draw(st.sampled_from("ab"))) for d in draw(st.lists(after, max_size=3))]
    dues = sorted({v.dues_cents for v in plans.versions})
    amounts = st.one_of(st.integers(1, 20000), st.builds(lambda c, k: max(1, c * k), st.sampled_from(dues),
                                                         st.integers(1, 3)))
    payments, adjustments = [], []
    if with_credits:
        for credited in draw(st.lists(after, max_size=8)):
            made = credited - timedelta(days=draw(st.integers(0, 5))) if draw(st.booleans()) else None
            payments.append(Payment(credited, draw(amounts), made=made))
        adjustments = [Adjustment(d, draw(st.integers(-5000, 5000))) for d in draw(st.lists(after, max_size=3))]
        if draw(st.booleans()):  # a regular payer: each month's start, the price of the plan then
            for k in range(draw(st.integers(1, 30))):
                day = add_months(joined, k)
                name = [c.plan for c in sorted(changes, key=lambda c: c.effective) if c.effective <= day][-1]
                payments.append(Payment(day, max(1, plans.at(name, day).dues_cents)))
    leaves, rejoins, mark = [], [], joined
    if with_leaves:
        for i in range(draw(st.integers(0, 4))):
            mark += timedelta(days=draw(st.integers(0 if i % 2 == 0 else 1, 200)))
            (leaves if i % 2 == 0 else rejoins).append(mark)
    h = MemberHistory("m", joined, tuple(changes), tuple(payments), tuple(adjustments), tuple(leaves),
                      tuple(rejoins))
    as_of = draw(st.one_of(st.builds(lambda k: joined + timedelta(days=k), st.integers(-20, 2500)),
                           st.builds(lambda k, d: add_months(joined, k) + timedelta(days=d),
                                     st.integers(0, 30), st.integers(0, 40))))
    return plans, h, as_of


RANK = {Status.PREPAID: 0, Status.CURRENT: 1, Status.DUE: 2, Status.OVERDUE: 3, Status.LAPSED: 4}


def counted_credit(h, as_of):
    """Credit by as_of, summed here from the facts, without the code under test."""
    return (sum(p.cents for p in h.payments if (p.made or p.credited) <= as_of)
            + sum(a.cents for a in h.adjustments if a.on <= as_of))


@PROPS
@given(st.lists(st.tuples(days, st.integers(0, 10**6), st.integers(0, 10**8), st.booleans(),
                          st.sampled_from(["bitcoin", "cash", "etransfer"])), max_size=12),
       st.lists(st.tuples(days, st.integers(0, 10**6), st.integers(0, 10**5), st.sampled_from(["vm1", "vm2"]),
                          st.sampled_from(["cola", "chips"])), max_size=12))
def test_monthly_income_adds_up_to_every_credited_payment_and_sale(pays, vends):
    payments = [Payment(None if pending else d, cents, method, made=d, sats=sats)
                for d, cents, sats, pending, method in pays]
    sales = [Sale(machine, product, sats, cents, d) for d, cents, sats, machine, product in vends]
    income = monthly_income(payments, sales)
    assert sum(m.total.cents for m in income.values()) == (
        sum(c for _, c, _, pending, _ in pays if not pending) + sum(c for _, c, _, _, _ in vends))
    assert sum(m.total.sats for m in income.values()) == (
        sum(s for _, _, s, pending, _ in pays if not pending) + sum(s for _, _, s, _, _ in vends))
    for month, m in income.items():
        assert month.day == 1 and (m.dues or m.sales)


@PROPS
@given(cases())
def test_money_is_conserved(case):
    plans, h, as_of = case
    s = member_state(h, plans, as_of)
    charged = sum(p.dues_cents for p in schedule(h, plans, as_of))
    assert charged == s.charged_cents
    assert charged - counted_credit(h, as_of) == -s.balance_cents


@PROPS
@given(cases(), st.integers(-40, 400), st.integers(1, 50000))
def test_one_more_payment_never_moves_paid_through_earlier_or_worsens_the_status(case, back, cents):
    plans, h, as_of = case
    paid_on = as_of - timedelta(days=back)
    more = MemberHistory(h.handle, h.joined, h.plan_changes, (*h.payments, Payment(paid_on, cents)),
                         h.adjustments, h.leaves, h.rejoins)
    before, after = member_state(h, plans, as_of), member_state(more, plans, as_of)
    assert after.paid_through >= before.paid_through
    if before.status in RANK:  # and the status is never worse
        assert RANK[after.status] <= RANK[before.status]
    if paid_on <= as_of:
        assert after.balance_cents == before.balance_cents + cents


@PROPS
@given(cases(with_leaves=False), st.lists(st.integers(0, 1500), min_size=2, max_size=12))
def test_status_only_worsens_with_time_when_nothing_is_paid(case, offsets):
    plans, h, as_of = case
    sample = [as_of + timedelta(days=k) for k in offsets]
    # Only the credits before the first sampled day count: from then on, time alone passes.
    first = min(sample)
    h = MemberHistory(h.handle, h.joined, h.plan_changes,
                      tuple(p for p in h.payments if (p.made or p.credited) <= first),
                      tuple(a for a in h.adjustments if a.on <= first))
    ranks = [RANK[s] for s in (status(h, plans, d) for d in sorted(sample)) if s is not None]
    assert ranks == sorted(ranks)


@PROPS
@given(cases(), st.integers(1, 2000))
def test_lapsed_stays_lapsed_without_a_payment_even_across_leaving_and_rejoining(case, gap):
    plans, h, d1 = case
    d2 = d1 + timedelta(days=gap)
    if status(h, plans, d1) != Status.LAPSED:
        return
    no_new_credit = not any(d1 < (p.made or p.credited) <= d2 for p in h.payments) \
        and not any(d1 < a.on <= d2 for a in h.adjustments)
    if no_new_credit:
        assert status(h, plans, d2) in (Status.LAPSED, Status.LEFT)


@PROPS
@given(cases(), st.integers(0, 900), st.integers(0, 900))
def test_transitions_replay_to_the_status_of_any_day(case, span, at):
    plans, h, start = case
    end = start + timedelta(days=span)
    as_of = start + timedelta(days=min(at, span))
    found = transitions(h, plans, start, end)
    chain = replayed = status(h, plans, start)
    for t in found:
        assert start < t.on <= end and t.old == chain and t.new != t.old
        chain = t.new
        if t.on <= as_of:
            replayed = t.new
    assert replayed == status(h, plans, as_of)
    assert [t.on for t in found] == sorted({t.on for t in found})  # each day at most once


@settings(max_examples=25, deadline=None)
@given(cases())
def test_transitions_agree_with_the_status_of_every_day(case):
    plans, h, start = case
    end = start + timedelta(days=120)
    expected, before = [], status(h, plans, start)
    d = start + DAY
    while d <= end:
        now = status(h, plans, d)
        if now != before:
            expected.append(Transition("m", d, before, now))
            before = now
        d += DAY
    assert transitions(h, plans, start, end) == expected


def month_index(d):
    return d.year * 12 + d.month


@PROPS
@given(st.integers(1, 31), st.integers(2000, 2100), st.integers(1, 12), st.sampled_from(["month", "quarter", "year"]))
def test_period_starts_keep_the_anchor_day_and_never_skip_or_repeat_a_month(anchor_day, year, month, period):
    first_of = D(year, month, 1)
    last = (D(year + month // 12, month % 12 + 1, 1) - DAY).day
    if anchor_day > last:
        return  # no such anchor in that month
    joined = D(year, month, anchor_day)
    plan = PlanVersion("p", 100, period, 10)
    h = MemberHistory("m", joined, (PlanChange(first_of, "p"),))
    ps = schedule(h, Plans((plan,)), joined + timedelta(days=366 * 9))
    step = plan.months
    for p, q in zip(ps, ps[1:]):
        assert q.start > p.start and p.end == q.start - DAY
        assert month_index(q.start) - month_index(p.start) == step
        month_len = (D(q.start.year + q.start.month // 12, q.start.month % 12 + 1, 1) - DAY).day
        assert q.start.day == min(anchor_day, month_len)


@PROPS
@given(cases(), st.integers(0, 400))
def test_no_overdue_or_lapse_is_published_during_an_ongoing_outage(case, span):
    plans, h, since = case
    now = since + timedelta(days=span)
    outage = Outage("chain", since + timedelta(days=span // 2))
    j = publishable(h, plans, [outage], since, now)
    assert not [t for t in j.published if t.on >= outage.start]
    assert j.published + j.held == tuple(transitions(h, plans, since, now))


@st.composite
def outage_stories(draw):
    """A member on a month plan, joined a few months before ``since``; payments made inside the
    next 120 days (whole months' dues, sometimes less), each credited 0-6 days after it is seen."""
    since = draw(st.dates(min_value=D(2024, 1, 1), max_value=D(2026, 1, 1)))
    plans = Plans((PlanVersion("a", draw(st.sampled_from([1000, 4000])), "month", draw(st.integers(0, 20)),
                               term_days=draw(st.integers(0, 10))),))
    joined = since - timedelta(days=draw(st.integers(0, 100)))
    # Everything on ``since`` itself is settled, as a previous run would have left it: payments
    # and outages start the day after.
    day = st.builds(lambda k: since + timedelta(days=k), st.integers(1, 120))
    pays = [Payment(d, draw(st.sampled_from([500, 1000, 4000, 8000]))) for d in draw(st.lists(day, max_size=6))]
    h = MemberHistory("m", joined, (PlanChange(joined, "a"),), tuple(pays))
    windows = draw(st.lists(st.tuples(st.integers(1, 90), st.integers(0, 30)), max_size=2))
    lags = draw(st.lists(st.integers(0, 6), min_size=6, max_size=6))
    return plans, h, since, windows, lags


@settings(max_examples=40, deadline=None)
@given(outage_stories())
def test_a_reporter_judging_every_day_through_outages_publishes_each_transition_once(story):
    """A simulation: payments made during an outage are seen the day after it; each is credited
    some days after it is seen (pending until then). A Reporter runs every day with what it knows
    then. Put together, what it published is exactly what is computed afterwards from everything."""
    plans, h, since, windows, lags = story
    outages = [(since + timedelta(days=a), since + timedelta(days=a + n)) for a, n in windows]

    def seen(made):  # the day after the outage it falls in (and after any outage that day falls in)
        day = made
        while any(s <= day <= e for s, e in outages):
            day = max(e for s, e in outages if s <= day <= e) + DAY
        return day

    facts = []  # (made, seen, credited, cents)
    for p, lag in zip(h.payments, lags):
        made = p.made or p.credited
        facts.append((made, seen(made), seen(made) + timedelta(days=lag), p.cents))
    last = max([since + timedelta(days=120), *[f[2] for f in facts], *[e + DAY for _, e in outages]])

    def known(now):
        pays = tuple(Payment(c if c <= now else None, cents, made=m) for m, sn, c, cents in facts if sn <= now)
        return MemberHistory(h.handle, h.joined, h.plan_changes, pays, h.adjustments, h.leaves, h.rejoins)

    published, judged, now = [], since, since
    while now < last:
        now += DAY
        health = [Outage("chain", s, None if e >= now else e) for s, e in outages if s <= now]
        j = publishable(known(now), plans, health, judged, now)
        published += j.published
        judged = j.judged_through
    assert judged == last
    assert published == transitions(known(last), plans, since, last)


# -- a reference model: the docstring's rules written out plainly, day arithmetic from the calendar --

def ref_state(h, plans, as_of):
    """(status, paid_through, balance) straight from the rules, one period at a time."""
    import calendar

    def nth_month(anchor, k):
        y, m0 = divmod(anchor.month - 1 + k, 12)
        return date(anchor.year + y, m0 + 1, min(anchor.day, calendar.monthrange(anchor.year + y, m0 + 1)[1]))

    versions = sorted(plans.versions, key=lambda v: v.effective)

    def version_at(day):
        name = [c.plan for c in h.plan_changes if c.effective <= day][-1]
        return [v for v in versions if v.name == name and v.effective <= day][-1]

    credit = counted_credit(h, as_of)
    horizon = nth_month(as_of, 12 * 100)
    ps, last, active, total = [], None, None, 0
    for i, begin in enumerate((h.joined, *h.rejoins)):
        if begin > as_of:
            break
        leave = h.leaves[i] if i < len(h.leaves) and h.leaves[i] <= as_of else None
        active = leave is None
        anchor, k = (last[3], last[4]) if last and last[0] < begin <= last[1] else (begin, 0)
        while True:
            start = nth_month(anchor, k)
            if (leave is not None and start >= leave) or start > horizon or (
                    start > as_of and total > credit):
                break
            v = version_at(start)
            months = {"month": 1, "quarter": 3, "year": 12}[v.period]
            last = (start, nth_month(anchor, k + months) - DAY, v, anchor, k + months)
            ps.append(last)
            total += v.dues_cents
            k += months
    charged = sum(p[2].dues_cents for p in ps if p[0] <= as_of)
    covered, paid, unpaid = 0, [], None
    for p in ps:
        if covered + p[2].dues_cents > credit:
            unpaid = p
            break
        covered += p[2].dues_cents
        paid.append(p)
    paid_through = paid[-1][1] if paid else h.joined - DAY
    if active is None:
        st = None
    elif not active:
        st = Status.LEFT
    elif unpaid is not None and unpaid[0] <= as_of:
        due_on = unpaid[0] + timedelta(days=unpaid[2].term_days)
        st = (Status.DUE if as_of < due_on else Status.OVERDUE
              if as_of < due_on + timedelta(days=unpaid[2].grace_days) else Status.LAPSED)
    else:
        later = [p for p in ps if p[0] > as_of]
        st = Status.PREPAID if later and later[0] in paid else Status.CURRENT
    return st, paid_through, credit - charged


@PROPS
@given(cases())
def test_the_state_agrees_with_the_reference_model(case):
    plans, h, as_of = case
    s = member_state(h, plans, as_of)
    assert (s.status, s.paid_through, s.balance_cents) == ref_state(h, plans, as_of)
