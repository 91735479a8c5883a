"""Command line: run the simulator (`dctrl sim chain`) and drive a running one (`dctrl sim pay` ...).

The driving commands call the sim-only RPC methods over HTTP with the cookie
(or --rpc-user/--rpc-password), exactly as any bitcoind client would.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import logging
import os
import signal
import sys
import threading
import urllib.parse
from decimal import Decimal
from pathlib import Path

from proto.errors import DctrlError

DEFAULT_RPC_URL = "http://127.0.0.1:18443"


def default_datadir(args) -> Path:
    """``--datadir``, else ``HOME/sim/chain`` where HOME is --home, $DCTRL_HOME or ./var."""
    if getattr(args, "datadir", None):
        return Path(args.datadir)
    home = getattr(args, "home", None) or os.environ.get("DCTRL_HOME") or "var"
    return Path(home) / "sim" / "chain"


# -- running the simulator -----------------------------------------------------

def cmd_sim_chain(args) -> int:
    """Run the simulator in the foreground until SIGINT/SIGTERM or the `stop` RPC."""
    from scripts.sim.chainsim.sim import DEFAULT_RPC_PORT, DEFAULT_ZMQ_PORT, ChainSim

    rpc_port = DEFAULT_RPC_PORT if getattr(args, "rpc_port", None) is None else args.rpc_port
    zmq_port = DEFAULT_ZMQ_PORT if getattr(args, "zmq_port", None) is None else args.zmq_port
    sim = ChainSim(default_datadir(args), rpc_port=rpc_port, zmq_port=zmq_port,
                   user=getattr(args, "rpc_user", None), password=getattr(args, "rpc_password", None),
                   esplora_port=getattr(args, "esplora_port", None),
                   txindex=getattr(args, "txindex", True))
    try:
        sim.start()
    except OSError as exc:
        raise DctrlError(f"chain sim could not bind its ports: {exc}") from None
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: sim.stop_requested.set())
    esplora = f" esplora={sim.esplora_url}" if getattr(args, "esplora_port", None) is not None else ""
    print(f"chain sim ready: rpc={sim.rpc_url} zmq={sim.zmq_endpoint}{esplora} "
          f"cookie={sim.cookie_file or '-'} height={sim.chain.height} datadir={sim.datadir}", flush=True)
    try:
        # A timed wait so that signal handlers run promptly in the main thread.
        while not (sim.stop_requested.wait(0.5) or sim.stopped.is_set()):
            pass
    finally:
        sim.stop()  # waits for a stop already running in another thread
    return 0


# -- driving a running simulator -------------------------------------------------

def _credentials(args) -> tuple[str, str]:
    if getattr(args, "rpc_user", None) is not None and getattr(args, "rpc_password", None) is not None:
        return args.rpc_user, args.rpc_password
    cookie = Path(args.cookie) if getattr(args, "cookie", None) else default_datadir(args) / ".cookie"
    try:
        user, _, password = cookie.read_text().strip().partition(":")
    except OSError as exc:
        raise DctrlError(f"cannot read the RPC cookie {cookie}: {exc.strerror} (is `dctrl sim chain` running?)") \
            from None
    return user, password


def _rpc_url(args) -> str:
    """``--rpc-url``, else the home's ``[chain.bitcoind] rpc_url``, else the default port."""
    if getattr(args, "rpc_url", None):
        return args.rpc_url
    try:
        from keys.home import Home

        return Home(getattr(args, "home", None)).config["chain"]["bitcoind"]["rpc_url"]
    except (DctrlError, KeyError):
        return DEFAULT_RPC_URL


def rpc_call(args, method: str, *params, timeout: float = 30.0):
    """One JSON-RPC 1.0 call to the sim (see :func:`_rpc_url`); DctrlError on any failure."""
    url = urllib.parse.urlparse(_rpc_url(args))
    user, password = _credentials(args)
    body = json.dumps({"jsonrpc": "1.0", "id": "dctrl", "method": method, "params": list(params)})
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=timeout)
    try:
        conn.request("POST", url.path or "/", body, {"Authorization": f"Basic {token}",
                                                     "Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
    except OSError as exc:
        raise DctrlError(f"chain sim not reachable at {url.geturl()}: {exc}") from None
    finally:
        conn.close()
    if resp.status == 401:
        raise DctrlError("chain sim refused the credentials (HTTP 401): wrong --cookie or --rpc-password?")
    try:
        reply = json.loads(data, parse_float=Decimal)
    except ValueError:
        raise DctrlError(f"{method}: HTTP {resp.status} without a JSON body") from None
    if reply.get("error"):
        err = reply["error"]
        raise DctrlError(f"{method}: {err.get('message')} (code {err.get('code')})")
    return reply.get("result")


def cmd_sim_address(args) -> int:
    print(rpc_call(args, "sim_newaddress"))
    return 0


def _say(line: str) -> None:
    """The human line of a command whose stdout is for scripts (`T=$(dctrl sim pay ...)`)."""
    print(line, file=sys.stderr, flush=True)


def cmd_sim_pay(args) -> int:
    """Prints the txid on stdout, and what happened on stderr."""
    rbf = bool(getattr(args, "rbf", False))
    params = [args.address, str(args.amount), rbf]
    if getattr(args, "feerate", None) is not None:
        params.append(args.feerate)
    txid = rpc_call(args, "sim_pay", *params)
    print(txid, flush=True)
    _say(f"paid {args.amount} BTC to {args.address}: transaction {txid} is in the mempool"
         f"{' (replaceable)' if rbf else ''}; confirm it with `dctrl sim mine 1`")
    return 0


def cmd_sim_mine(args) -> int:
    """Prints the new blocks' hashes on stdout, and what happened on stderr."""
    n = getattr(args, "n", None) or 1
    hashes = rpc_call(args, "sim_mine", n)
    for block_hash in hashes:
        print(block_hash, flush=True)
    if hashes:
        confirmed = len(rpc_call(args, "getblock", hashes[0], 1)["tx"]) - 1  # the mempool went into the first
        height = rpc_call(args, "getblockcount")
        _say(f"mined {len(hashes)} block{'s' if len(hashes) != 1 else ''}, the tip is now at height {height}; "
             f"{confirmed} transaction{'s' if confirmed != 1 else ''} from the mempool confirmed")
    return 0


def cmd_sim_replace(args) -> int:
    print(rpc_call(args, "sim_replace", args.txid))
    return 0


def cmd_sim_reorg(args) -> int:
    for block_hash in rpc_call(args, "sim_reorg", args.depth):
        print(block_hash)
    return 0


def cmd_sim_drop_zmq(args) -> int:
    rpc_call(args, "sim_drop_zmq", args.n)
    print(f"the next {args.n} zmq messages will not be sent")
    return 0


def cmd_sim_stop_rpc(args) -> int:
    rpc_call(args, "sim_stop_rpc", args.seconds)
    print(f"rpc connections are closed unanswered for {args.seconds} s")
    return 0


# -- parsers -----------------------------------------------------------------------

def server_options(p, *, home_suppressed: bool):
    if home_suppressed:
        p.add_argument("--home", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    p.add_argument("--datadir", help="sim data directory (default HOME/sim/chain)")
    p.add_argument("--rpc-user", help="RPC user instead of the cookie (needs --rpc-password)")
    p.add_argument("--rpc-password", help="RPC password instead of the cookie")
    if p.prog.split()[-1] not in ("chain", "sim_chain"):
        return  # (the clients share these options; txindex is the server's)
    p.add_argument("--no-txindex", dest="txindex", action="store_false", default=True,
                   help="getrawtransaction finds a confirmed transaction only given its block hash, as bitcoind "
                        "without -txindex (its default)")


def client_options(p):
    p.add_argument("--rpc-url", default=None,
                   help=f"sim RPC URL (default: the home's [chain.bitcoind] rpc_url, else {DEFAULT_RPC_URL})")
    p.add_argument("--cookie", help="cookie file (default DATADIR/.cookie)")


def main(argv=None) -> int:
    """``python -m scripts.sim.chain --datadir D [--rpc-port P] [--zmq-port Q]``: run the simulator."""
    p = argparse.ArgumentParser(prog="sim_chain", description="Run the chain simulator (regtest bitcoind "
                                                              "stand-in) in the foreground.")
    p.add_argument("--home", default=None, help="dctrl home, for the default datadir")
    server_options(p, home_suppressed=False)
    p.add_argument("--rpc-port", type=int, default=None, help="JSON-RPC port (default 18443; 0 = any free port)")
    p.add_argument("--zmq-port", type=int, default=None, help="ZMQ PUB port (default 28332; 0 = any free port)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return cmd_sim_chain(args)
    except DctrlError as exc:
        print(f"sim_chain: {exc}", file=sys.stderr)
        return 2
