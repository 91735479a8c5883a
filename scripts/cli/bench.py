"""`dctrl bench [bus|chain|vend|faults|members|mail|payouts|server]`: the benchmarks of scripts/bench/, one JSON object."""

from __future__ import annotations

from scripts.cli.common import command


def cmd_bench(args):
    if args.suite == "chain":
        from scripts.bench.chain import main as chain_main

        return chain_main(args)
    if args.suite == "vend":
        from scripts.bench.vend import main as vend_main

        return vend_main(args)
    if args.suite == "members":
        from scripts.bench.members import main as members_main

        return members_main(args)
    if args.suite == "payouts":
        from scripts.bench.payouts import main as payouts_main

        return payouts_main(args)
    if args.suite == "mail":
        from scripts.bench.mail import main as mail_main

        return mail_main(args)
    if args.suite == "server":
        from scripts.bench.server import main as server_main

        return server_main(args)
    if args.suite == "faults":
        from scripts.bench.faults import main as faults_main

        return faults_main(args)
    from scripts.bench.bus import main as bench_main

    return bench_main(args)


def register(sub):
    sp = command(sub, "bench", cmd_bench, "benchmarks; prints one JSON object")
    sp.add_argument("suite", nargs="?", default="bus",
                    choices=("bus", "chain", "vend", "faults", "members", "mail", "payouts", "server"),
                    help="bus: the broker against zmq.proxy; chain: payment detection and catch-up; "
                         "vend: payment to relay pin end to end, and the agent's memory and start-up; "
                         "faults: purchases under random kill -9 and SIGSTOP, counting double, lost and "
                         "unpaid vends, unrecorded payments and processes that did not come back; "
                         "members: the Reporter's full status, one member and income against a SQL baseline; "
                         "mail: MemberMail's dispatcher to a loopback SMTP server against plain smtplib; "
                         "payouts: a 2-of-3 payout built, signed and finalized from 2,000 UTXOs against "
                         "embit alone; server: the report server's dashboard and report endpoints, p50 and "
                         "p99 under 20 concurrent clients, against a static body from the same waitress")
    sp.add_argument("--seeds", default="3", metavar="N",
                    help="faults: seeds 0..N-1 (or A-B, or A,B,...), one scenario each (default 3)")
    sp.add_argument("--members", type=int, default=5000, help="members, server: how many (default 5000)")
    sp.add_argument("--sales", type=int, default=500_000, help="members, server: vending sales (default 500000)")
    sp.add_argument("--messages", type=int, default=None, help="mail: receipts a round (default 1000; "
                                                                  "--quick: 100)")
    sp.add_argument("--json", action="store_true", help="(always JSON; accepted for clarity)")
    sp.add_argument("--quick", action="store_true", help="finish in under 30 s (faults: about 25 s a seed)")
