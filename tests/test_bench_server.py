"""`dctrl bench server --quick --json` (scripts/bench/server.py): runs, and its JSON has the shape
the README describes, with positive numbers (no timing is asserted: a shared machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.harness import ROOT


def test_bench_server_quick():
    env = {k: v for k, v in os.environ.items() if k != "DCTRL_BENCH_PG_URL"}
    from tests.test_db import PG_URL

    env["DCTRL_BENCH_PG_URL"] = PG_URL
    r = subprocess.run([sys.executable, "-m", "scripts.cli", "bench", "server", "--quick", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["suite"] == "server" and out["clients"] == 20
    assert out["members"] == 300 and out["sales"] == 5000
    assert set(out["targets_p99_ms"]) == {"dashboard", "reports_income", "reports_members"}
    assert isinstance(out["met"], bool)
    for kind in ("sqlite", "postgresql"):
        run = out[kind]
        base = run["baseline_static"]
        assert base["requests"] > 0 and base["rps"] > 0 and 0 < base["p50_ms"] <= base["p99_ms"]
        assert base["server_cpu_ms_per_request"] >= 0
        # each path measured or skipped with why (before the dashboard or an endpoint exists)
        assert set(run["endpoints"]) | set(run["skipped"]) == set(out["targets_p99_ms"])
        assert "reports_members" in run["endpoints"]  # (there since the server's skeleton)
        for name, e in run["endpoints"].items():
            assert e["requests"] > 0 and e["rps"] > 0 and e["bytes"] > 0 and e["server_cpu_ms_per_request"] > 0
            assert 0 < e["p50_ms"] <= e["p99_ms"] and e["ratio_p50"] > 0 and e["ratio_p99"] > 0
            assert e["target_p99_ms"] == out["targets_p99_ms"][name]
            assert e["met"] == (e["p99_ms"] <= e["target_p99_ms"] and not e.get("errors"))
        for s in run["skipped"].values():
            assert s["status"] != 200 and s["path"].startswith("/")
        assert run["met"] == all(e["met"] for e in run["endpoints"].values())
        assert run["populate_s"] >= 0 and run["fold_s"] >= 0
