"""`dctrl bench server`: the report server under 20 concurrent clients (issue 14's benchmark).

"With 5,000 members and 500,000 sales: the dashboard and the API's report endpoints, p50 and
p99 under 20 concurrent clients, on SQLite and PostgreSQL, with the bottle app against a static
file from the same WSGI server as the baseline in the same run. Targets: dashboard p99 at most
100 ms, report endpoints at most 50 ms."

For each database (a throwaway SQLite file; PostgreSQL when ``DCTRL_BENCH_PG_URL`` names one: a
schema of its own, dropped at the end):

- MemberData's and BusinessMgr's tables are filled as `dctrl bench members` fills them
  (``--members``, 5,000 paying monthly for the five years up to this month; ``--sales`` vended
  invoices over those years, 500,000;
  ``--quick``: 300 and 5,000), then the Reporter's kept totals are folded on today (what a
  running Reporter holds; ``ANALYZE`` on PostgreSQL, which autovacuum would do);
- a minimal home (config.toml naming the database) and an API token with every scope;
- one server process (``python -m scripts.bench.server serve HOME HOST:PORT``): the app of
  ``dctrl serve`` (:func:`actors.server.app.make_app`) on waitress with ``dctrl serve``'s
  settings (``[server] threads``, 8), and beside it, in the same waitress, ``/bench-static``: a
  fixed 2 KiB body answered without bottle, the baseline;
- 20 client threads, each with one keep-alive ``http.client`` connection, request one path for
  ``seconds`` (after a warm-up), then the next. Each path of :data:`PATHS` is first asked once:
  an answer other than 200 (a 404 before the page or endpoint exists) skips it, with the status
  in ``skipped``. An answer other than 200 under load is counted (``errors``, ``first_error``),
  not timed, and the path then fails its target.

Reported per path: requests, requests a second, p50 and p99 in ms, the ratios to the static
baseline's p50 and p99, the target and whether p99 met it, and the server process's CPU time per
request (``server_cpu_ms_per_request``: what the server spent, apart from waiting its turn; the
clients share the machine).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

CLIENTS = 20
STATIC_PATH = "/bench-static"
STATIC_BODY = b'{"static": "' + b"x" * 2030 + b'"}\n'  # 2 KiB: about a report's size
# (name, path, p99 target in ms)
PATHS = (
    ("dashboard", "/", 100),
    ("reports_income", "/api/reports/income", 50),
    ("reports_members", "/api/reports/members", 50),
)
ROOT = Path(__file__).resolve().parent.parent.parent


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100), nearest rank."""
    ordered = sorted(values)
    k = max(0, min(len(ordered) - 1, int(round(q / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


# -- the server process ----------------------------------------------------------------------


def static_beside(app):
    """``app`` with :data:`STATIC_PATH` answered by a fixed body, without bottle (the baseline)."""
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(STATIC_BODY)))]

    def dispatch(environ, start_response):
        if environ.get("PATH_INFO") == STATIC_PATH:
            start_response("200 OK", headers)
            return [STATIC_BODY]
        return app(environ, start_response)
    return dispatch


def serve(home_dir: str, listen: str) -> int:
    """The server of the bench: ``dctrl serve``'s app and waitress settings, plus the static path."""
    import logging

    import waitress

    from actors.server.app import make_app
    from keys.home import Home
    from scripts.cli.serve import parse_listen

    home = Home(home_dir)
    host, port = parse_listen(listen)
    app = make_app(home)
    logging.getLogger().setLevel(logging.INFO)  # (as dctrl serve)
    waitress.serve(static_beside(app), host=host, port=port, threads=int(home.config["server"]["threads"]),
                   ident="dctrl", clear_untrusted_proxy_headers=True, _quiet=True)
    return 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(home_dir: Path):
    port = _free_port()
    log = open(home_dir / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "scripts.bench.server", "serve", str(home_dir),
                             f"127.0.0.1:{port}"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = request(port, STATIC_PATH, {})
                if status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                raise RuntimeError(f"the bench's server did not start: "
                                   f"{(home_dir / 'server.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield port, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- the clients -------------------------------------------------------------------------------


def request(port: int, path: str, headers: dict, conn=None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", path, headers=headers)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        if own:
            conn.close()


def cpu_s(pid: int) -> float:
    """The CPU time (user and system) process ``pid`` has used, in seconds (Linux /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load(port: int, path: str, headers: dict, seconds: float, warmup: float, clients: int = CLIENTS,
         pid: int | None = None) -> dict:
    """``clients`` threads, each on one keep-alive connection, asking ``path`` over and over for
    ``warmup`` then ``seconds``; the latencies of the second part."""
    start = threading.Barrier(clients + 1)
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []
    times = {}

    def client():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine, failed = [], []
        try:
            start.wait()
            measure_from, end = times["from"], times["end"]
            while True:
                t = time.perf_counter()
                if t >= end:
                    break
                try:
                    status, body = request(port, path, headers, conn)
                except (OSError, http.client.HTTPException) as exc:  # (the connection is made again)
                    conn.close()
                    status, body = type(exc).__name__, str(exc).encode()
                done = time.perf_counter()
                if status != 200:  # counted and reported, not timed
                    failed.append(f"{status}: {body[:200].decode(errors='replace')}")
                    if len(failed) > 1000:
                        break
                    continue
                if t >= measure_from:
                    mine.append((done - t) * 1000)
        finally:
            conn.close()
            with lock:
                latencies.extend(mine)
                errors.extend(failed)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for th in threads:
        th.start()
    now = time.perf_counter()
    times["from"], times["end"] = now + warmup, now + warmup + seconds
    start.wait()
    cpu = None
    if pid is not None:  # the server's CPU over the measured part (the warm-up left out)
        time.sleep(max(0.0, times["from"] - time.perf_counter()))
        cpu = cpu_s(pid)
        time.sleep(max(0.0, times["end"] - time.perf_counter()))
        cpu = cpu_s(pid) - cpu
    for th in threads:
        th.join()
    if not latencies:
        raise RuntimeError(f"{path}: no request answered 200 within the {seconds} s measured "
                           f"({len(errors)} failed, the first: {errors[0] if errors else '-'})")
    more = {} if cpu is None else {"server_cpu_ms_per_request": round(cpu * 1000 / len(latencies), 3)}
    if errors:  # (a failure is never hidden: the path does not meet its target)
        more.update(errors=len(errors), first_error=errors[0])
    return {**more, "requests": len(latencies), "rps": round(len(latencies) / seconds, 1),
            "p50_ms": round(percentile(latencies, 50), 2), "p99_ms": round(percentile(latencies, 99), 2),
            "mean_ms": round(statistics.fmean(latencies), 2)}


# -- one database ------------------------------------------------------------------------------


def fill(database, members: int, sales: int) -> dict:
    """MemberData's and BusinessMgr's tables as `dctrl bench members` fills them, and the
    Reporter's kept totals folded on today."""
    from actors.db import ensure_tables
    from actors.reporter.business import month_of
    from actors.reporter.dues import add_months
    from actors.reporter.models import TABLES as REPORT_TABLES, db as report_db
    from actors.reporter.totals import fold
    from scripts.bench.members import populate, populate_sales

    today = datetime.now(timezone.utc).date()
    start = add_months(month_of(today), -59)  # five years of monthly payments up to this month
    t = time.perf_counter()
    populate(database, members, start=start)
    if sales:
        populate_sales(database, sales, start, today)
    if database.param != "?":
        database.execute_sql("ANALYZE")
    populate_s = round(time.perf_counter() - t, 1)
    report_db.initialize(database)
    ensure_tables(database, REPORT_TABLES)
    from actors.payout_mgr.ledger import MODELS as PAYOUT_TABLES

    with database.bind_ctx(PAYOUT_TABLES):  # (empty: the dashboard's payouts section reads them)
        ensure_tables(database, PAYOUT_TABLES)
    t = time.perf_counter()
    fold(database, as_of=today)
    return {"populate_s": populate_s, "fold_s": round(time.perf_counter() - t, 1), "as_of": today.isoformat()}


def measure(home_dir: Path, database_url: str, seconds: float, warmup: float) -> dict:
    from actors.server.tokens import SCOPES, TokenStore

    with open(home_dir / "config.toml", "w") as f:
        f.write(f'[database]\nurl = "{database_url}"\n')
    token, _ = TokenStore(home_dir / "server_tokens.json").add("bench", list(SCOPES), 86400)
    headers = {"Authorization": f"Bearer {token}", "Cookie": f"dctrl_token={token}"}
    out: dict = {"endpoints": {}, "skipped": {}}
    with server_process(home_dir) as (port, pid):
        base = load(port, STATIC_PATH, {}, seconds, warmup, pid=pid)
        if base.get("errors"):
            raise RuntimeError(f"the static baseline failed: {base['first_error']}")
        out["baseline_static"] = {"path": STATIC_PATH, "bytes": len(STATIC_BODY), **base}
        for name, path, target in PATHS:
            status, body = request(port, path, headers)
            if status != 200:
                out["skipped"][name] = {"path": path, "status": status,
                                        "note": "not measured: the server answered this, not 200 "
                                                "(not there yet?)", "body": body[:200].decode(errors="replace")}
                continue
            got = load(port, path, headers, seconds, warmup, pid=pid)
            out["endpoints"][name] = {
                "path": path, "bytes": len(body), **got,
                "ratio_p50": round(got["p50_ms"] / base["p50_ms"], 2),
                "ratio_p99": round(got["p99_ms"] / base["p99_ms"], 2),
                "target_p99_ms": target, "met": got["p99_ms"] <= target and not got.get("errors")}
    out["met"] = all(e["met"] for e in out["endpoints"].values())
    return out


def one(kind: str, url: str, tmp: Path, members: int, sales: int, seconds: float, warmup: float) -> dict:
    from actors.db import connect

    database = connect(url)
    try:
        filled = fill(database, members, sales)
    finally:
        database.close()
    home_dir = tmp / kind
    home_dir.mkdir()
    return {**filled, **measure(home_dir, url, seconds, warmup)}


def main(args) -> int:
    quick = bool(getattr(args, "quick", False))
    members = 300 if quick else int(getattr(args, "members", None) or 5000)
    sales = 5000 if quick else int(getattr(args, "sales", None) or 500_000)
    seconds, warmup = (1.0, 0.3) if quick else (8.0, 1.5)
    out = {"suite": "server", "clients": CLIENTS, "members": members, "sales": sales, "seconds": seconds,
           "targets_p99_ms": {name: target for name, _path, target in PATHS}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        out["sqlite"] = one("sqlite", f"sqlite:///{tmp}/bench.sqlite3", tmp, members, sales, seconds, warmup)
        pg = os.environ.get("DCTRL_BENCH_PG_URL")
        if pg:
            from scripts.bench import pg_schema_url

            with pg_schema_url(pg) as url:
                out["postgresql"] = one("postgresql", url, tmp, members, sales, seconds, warmup)
    out["met"] = all(out[k]["met"] for k in ("sqlite", "postgresql") if k in out)
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":  # the bench's server process: python -m scripts.bench.server serve HOME HOST:PORT
    if len(sys.argv) == 4 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2], sys.argv[3]))
    sys.exit("usage: python -m scripts.bench.server serve HOME HOST:PORT")
