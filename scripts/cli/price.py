"""The CLI's price commands: `dctrl price show`, `dctrl sim exchanges`, `dctrl sim exchange-set`.

Each ``cmd_*`` takes the argparse Namespace; :func:`register` adds `price` to
the CLI's parser; scripts/cli/sim.py adds the simulator's two under `sim`.
Imports of the bus stay inside the functions so building the parser stays cheap.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

from proto.errors import DctrlError

from scripts.cli.common import command, hide_home
from scripts.sim.exchanges import DEFAULT_PORT

SIM_URL = f"http://127.0.0.1:{DEFAULT_PORT}"
PRICE_TOPICS = ("price.btc_cad", "price.stale")


def wait_for_price(settings, timeout: float):
    """The next ``price.btc_cad`` or ``price.stale`` reaching ``settings``' identity, or None."""
    from actors.runtime import Actor, Runtime, every, on

    class PriceWatcher(Actor):
        msg = None

        def __init__(self):
            self.deadline = time.monotonic() + timeout

        @on("price")
        def got(self, msg):
            if msg.topic in PRICE_TOPICS:
                self.msg = msg
                self.runtime.stop()

        @every(0.1)
        def give_up(self):
            if time.monotonic() >= self.deadline:
                self.runtime.stop()

    watcher = PriceWatcher()
    Runtime(watcher, settings).run()
    return watcher.msg


def cmd_price_show(args):
    """Print the next price message with every source's health; exit 1 if the price is stale."""
    from keys.home import Home

    home = Home(args.home)
    timeout = args.timeout if args.timeout is not None else 30.0
    msg = wait_for_price(home.bus_settings(getattr(args, "as_name", None) or "admin"), timeout)
    if msg is None:
        raise DctrlError(f"no price.btc_cad or price.stale within {timeout:g} s: is price_notifier running?")
    stale = msg.topic == "price.stale"
    body = msg.body
    if args.json:
        print(json.dumps({"topic": msg.topic, "stale": stale, "sender": msg.sender, "ts": msg.ts, **body},
                         sort_keys=True))
        return 1 if stale else 0
    if stale:
        print(f"PRICE STALE: {body['reason']} (no sales)")
    else:
        as_of = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(body["as_of"] / 1000))
        print(f"BTC-CAD {body['cad_per_btc']} (median of {body['used']} sources, oldest quote {as_of})")
    print(f"{'SOURCE':<11} {'USED':<5} {'FRESH':<6} {'CAD/BTC':>13} {'AGE':>6}  ERROR")
    for s in body["sources"]:
        age = f"{s['age_s']}s" if s["age_s"] is not None else "-"
        print(f"{s['name']:<11} {'yes' if s['used'] else 'no':<5} {'yes' if s['fresh'] else 'no':<6} "
              f"{s['price'] or '-':>13} {age:>6}  {s['error'] or '-'}")
    return 1 if stale else 0


def cmd_sim_exchanges(args):
    """Run the exchange simulator in the foreground."""
    from decimal import Decimal

    from scripts.sim.exchanges import DEFAULT_FX, DEFAULT_PRICE, serve

    def ready(server):
        print(f"sim exchanges on {server.url}; control: dctrl sim exchange-set SOURCE --mode MODE --price P",
              flush=True)
    serve(args.port, host=getattr(args, "host", None) or "127.0.0.1",
          price=Decimal(getattr(args, "price", None) or DEFAULT_PRICE),
          fx=Decimal(getattr(args, "fx", None) or DEFAULT_FX), ready=ready)


def cmd_sim_exchange_set(args):
    """Set a simulated source's price and/or mode; prints the simulator's state."""
    change = {k: v for k, v in (("price", args.price), ("mode", args.mode),
                                ("delay", getattr(args, "delay", None))) if v is not None}
    url = f"{(args.url or SIM_URL).rstrip('/')}/_sim/{args.source}"
    req = urllib.request.Request(url, data=json.dumps(change).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            state = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise DctrlError(f"sim refused: {json.loads(exc.read() or b'{}').get('error', exc.reason)}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise DctrlError(f"sim exchanges not reachable at {url}: {getattr(exc, 'reason', exc)}") from None
    print(json.dumps(state, sort_keys=True))


def _cmd_price(args):
    return cmd_price_show(args)  # `show` is the only action so far


def register(sub) -> None:
    """`dctrl price show` (the exchange simulator's commands are the `sim` group's: scripts/cli/sim.py)."""
    sp = command(sub, "price", _cmd_price, "the BTC-CAD price and each source's health, from price_notifier")
    actions = sp.add_subparsers(dest="price_cmd", required=True, metavar="ACTION")
    p = actions.add_parser("show", help="wait for the next price message; exit 1 if stale")
    p.add_argument("--json", action="store_true", help="one JSON object")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait (default 30)")
    p.add_argument("--as", dest="as_name", default="admin", help="identity to listen as (default admin)")
    p.set_defaults(fn=cmd_price_show)
    hide_home(*actions.choices.values())
