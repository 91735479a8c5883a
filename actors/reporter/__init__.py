"""Reporter: the derived state of members and of the business (issue 12).

The computing core is pure and lives apart from any actor, so the CLI, a web
server and the tests call it without a database, a bus or a clock:

- :mod:`actors.reporter.dues`: a member's schedule of periods, paid-through
  date, balance, status on a day and the transitions between two days;
- :mod:`actors.reporter.feeds`: which overdue and lapsed transitions are held
  back while our own payment or price feeds are down;
- :mod:`actors.reporter.business`: monthly income, active members, joins and
  leaves, retention;
- :mod:`actors.reporter.groups`: groups, explicit and by rule (keyholders).

Every function takes plain frozen values (built by MemberData's queries) and
an ``as_of`` date. The Reporter actor (scheduling, snapshots, ``member.status``
and ``report.*`` events) is to be built over these.
"""
