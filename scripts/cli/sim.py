"""`dctrl sim ...`: the simulators of the demo and the tests (scripts/sim/), and driving them.

- the chain, a regtest bitcoind stand-in: `sim chain|address|pay|mine|replace|reorg|drop-zmq|stop-rpc`
  (scripts/sim/chainsim/cli.py; not scripts/sim/chain.py, which imports embit)
- the exchanges' price APIs: `sim exchanges|exchange-set` (scripts/cli/price.py)
- the simulated vending machine's pins: `sim press|coin|door|drop|jam|pins` (scripts/sim/machine.py)
- the mail server: `sim smtp`, an SMTP sink keeping every message in a Maildir (scripts/sim/smtp.py)
"""

from __future__ import annotations

import argparse

from scripts.cli.common import command
from scripts.cli.price import SIM_URL, cmd_sim_exchange_set, cmd_sim_exchanges
from scripts.sim.chainsim.cli import (
    client_options, cmd_sim_address, cmd_sim_chain, cmd_sim_drop_zmq, cmd_sim_mine, cmd_sim_pay,
    cmd_sim_reorg, cmd_sim_replace, cmd_sim_stop_rpc, server_options)
from scripts.sim.exchanges import DEFAULT_PORT, MODES, SOURCES
from scripts.sim.machine import cmd_coin, cmd_door, cmd_drop, cmd_jam, cmd_pins, cmd_press


def register(sub):
    sp = command(sub, "sim", None, "simulators for the demo and the tests (a bitcoind chain, exchange price APIs)")
    sim_sub = sp.add_subparsers(dest="sim_cmd", required=True, metavar="SIM")
    _exchanges(sim_sub)
    _chain(sim_sub)
    _machine(sim_sub)
    _smtp(sim_sub)


def _smtp(sim_sub):
    """sim smtp"""
    p = sim_sub.add_parser("smtp", help="an SMTP sink on loopback keeping every message in a Maildir "
                                        "(HOME/sim/mail); the demo's [member_mail] sends to it")
    p.add_argument("--port", type=int, default=None, help="default: [demo] smtp_port (2525)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--maildir", help="where to keep the mail (default HOME/sim/mail)")
    p.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.set_defaults(fn=cmd_sim_smtp)


def cmd_sim_smtp(args):
    """Run the SMTP sink in the foreground."""
    from keys.home import DEFAULTS, Home, default_home
    from proto.errors import ConfigError
    from scripts.sim.smtp import maildir_path, serve

    root = getattr(args, "home", None) or default_home()
    port = args.port
    if port is None:
        try:
            port = Home(root).config["demo"]["smtp_port"]
        except ConfigError:  # no home: the default port
            port = DEFAULTS["demo"]["smtp_port"]
    maildir = args.maildir or maildir_path(root)

    def ready(controller):
        print(f"sim smtp on 127.0.0.1:{port}; every message kept in the Maildir {maildir}", flush=True)
    serve(port, maildir, host=args.host, ready=ready)


def _exchanges(sim_sub):
    """sim exchanges|exchange-set"""
    p = sim_sub.add_parser("exchanges", help="serve Kraken, Coinbase, Bitstamp, CoinGecko and the "
                                             "Bank of Canada FX APIs on loopback, with faults on command")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--price", help="BTC-CAD price (default 128400.00)")
    p.add_argument("--fx", help="USD->CAD rate (default 1.382)")
    p.set_defaults(fn=cmd_sim_exchanges)

    p = sim_sub.add_parser("exchange-set", help="set a simulated source's price or fault mode")
    p.add_argument("source", choices=(*SOURCES, "all"), help="all: --price sets the base price")
    p.add_argument("--price", help="CAD per BTC for this source (fx: the USD->CAD rate)")
    p.add_argument("--mode", choices=MODES, help="how it answers: ok, or a fault (see `dctrl sim exchanges`)")
    p.add_argument("--delay", type=float, help="seconds a slow answer takes (default 10)")
    p.add_argument("--url", default=SIM_URL, help=f"the simulator (default {SIM_URL})")
    p.set_defaults(fn=cmd_sim_exchange_set)
    for name in ("exchanges", "exchange-set"):
        sim_sub.choices[name].add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def _chain(sim_sub):
    """sim chain|address|pay|mine|replace|reorg|drop-zmq|stop-rpc"""

    def action(name, fn, help):
        a = sim_sub.add_parser(name, help=help, description=help)
        server_options(a, home_suppressed=True)
        if name != "chain":
            client_options(a)
        a.set_defaults(fn=fn)
        return a

    a = action("chain", cmd_sim_chain, "run the chain simulator in the foreground (JSON-RPC and ZMQ like "
                                       "a regtest bitcoind)")
    a.add_argument("--rpc-port", type=int, default=None, help="JSON-RPC port (default 18443; 0 = any free port)")
    a.add_argument("--zmq-port", type=int, default=None, help="ZMQ PUB port (default 28332; 0 = any free port)")
    a.add_argument("--esplora-port", type=int, default=None,
                   help="also serve the Esplora REST API on this port (default off; 0 = any free port)")
    action("address", cmd_sim_address, "print a fresh regtest address from the chain sim (sim_newaddress)")
    a = action("pay", cmd_sim_pay, "pay AMOUNT BTC to ADDRESS from the chain sim's coins; prints the txid "
                                   "(and on stderr what happened)")
    a.add_argument("address", help="a regtest address (dctrl sim address makes one)")
    a.add_argument("amount", help="BTC, e.g. 0.00120000")
    a.add_argument("--rbf", action="store_true", help="signal BIP125 replaceability")
    a.add_argument("--feerate", type=int, help="sat/vB (default 2)")
    a = action("mine", cmd_sim_mine, "mine N blocks (the mempool goes into the first); prints their hashes "
                                     "(and on stderr the new height)")
    a.add_argument("n", type=int, nargs="?", default=1, help="how many blocks (default 1)")
    a = action("replace", cmd_sim_replace, "replace a mempool tx by a higher-fee spend to the sim; prints the txid")
    a.add_argument("txid", help="the mempool transaction to replace")
    a = action("reorg", cmd_sim_reorg, "disconnect DEPTH blocks and mine DEPTH+1 new ones; prints their hashes")
    a.add_argument("depth", type=int, help="how many blocks to disconnect")
    a = action("drop-zmq", cmd_sim_drop_zmq, "do not send the next N zmq messages (a sequence gap)")
    a.add_argument("n", type=int, nargs="?", default=1, help="how many messages (default 1)")
    a = action("stop-rpc", cmd_sim_stop_rpc, "close RPC connections unanswered for SECONDS")
    a.add_argument("seconds", type=float, help="for how long")


def _machine(sim_sub):
    """sim press|coin|door|drop|jam|pins"""

    def action(name, fn, help):
        a = sim_sub.add_parser(name, help=help, description=help)
        a.add_argument("machine", help="the simulated machine's name (vm1 in the demo)")
        a.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the agent (default 5)")
        a.add_argument("--socket", help="the control socket (default HOME/agents/MACHINE/state/sim.sock)")
        a.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        a.set_defaults(fn=fn)
        return a

    a = action("press", cmd_press, "press a selection button of a simulated machine")
    a.add_argument("slot", type=int, help="the slot whose button to press")
    a.add_argument("--hold-ms", type=int, default=80, help="how long the button is held (default 80)")
    a.add_argument("--wait", type=float, default=10.0,
                   help="seconds to wait for business_mgr's invoice and print how to pay it (0: don't; default 10)")
    a.add_argument("--as", dest="as_name", default="admin", help="identity that listens for the invoice (admin)")
    a = action("coin", cmd_coin, "send N coin-acceptor pulses to a simulated machine")
    a.add_argument("n", type=int, help="how many pulses")
    a.add_argument("--pulse-ms", type=int, default=30, help="each pulse's length (default 30)")
    a.add_argument("--gap-ms", type=int, default=30, help="the gap between pulses (default 30)")
    a = action("door", cmd_door, "open or close a simulated machine's door")
    a.add_argument("state", choices=("open", "closed"), help="open or closed")
    action("drop", cmd_drop, "trigger a simulated machine's drop sensor (an item fell)")
    a = action("jam", cmd_jam, "make the next N vends of a simulated machine drop nothing (they ack failed)")
    a.add_argument("n", type=int, nargs="?", default=1, help="how many vends (default 1)")
    a = action("pins", cmd_pins, "a simulated machine's pins: levels now and when each was active")
    a.add_argument("--json", action="store_true", help="the agent's whole answer, with every change (µs since "
                                                       "the epoch)")
