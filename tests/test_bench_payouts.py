"""`dctrl bench payouts --quick`: the JSON's shape, and that ours and the baseline spend the
same number of inputs (the comparison is of the same payout). Speed is the benchmark's, not a test's."""

from __future__ import annotations

import argparse
import json

from scripts.bench.payouts import main


def test_the_payouts_bench_prints_a_ratio_against_embit_alone(capsys):
    assert main(argparse.Namespace(suite="payouts", quick=True, json=True)) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["suite"] == "payouts" and out["utxos"] == 200
    assert out["inputs"] == out["baseline_inputs"] >= 2
    assert out["payout_ms"] > 0 and out["baseline_ms"] > 0
    assert out["ratio"] == round(out["payout_ms"] / out["baseline_ms"], 2)
    assert out["pending"] == 20 and 0 < out["restart_s"] < 60
