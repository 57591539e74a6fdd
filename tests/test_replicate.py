"""The mini-replication benchmark's quick path at a tiny size: real tokenizers, real teacher, real runs."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ce", "uld", "gold", "hkl", "pkl")
SEEDS = 2


def _replicate():
    if "bench_replicate" in sys.modules:
        return sys.modules["bench_replicate"]
    spec = importlib.util.spec_from_file_location("bench_replicate", ROOT / "bench" / "replicate.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_replicate"] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def replicated(tmp_path_factory):
    """One tiny run of the whole protocol (P-KL regime, every method, two seeds) and its outputs."""
    out = tmp_path_factory.mktemp("replicate")
    mod = _replicate()
    record = mod.main(["--quick", "--regimes", "pkl", "--seeds", str(SEEDS), "--steps", "1", "--teacher-steps", "1",
                       "--eval-size", "2", "--heldout-texts", "2", "--dim", "16", "--layers", "1", "--teacher-dim", "16",
                       "--teacher-layers", "1", "--batch-size", "1", "--teacher-batch", "1", "--seq-len", "16",
                       "--corpus-lines", "40", "--out", str(out), "--runs-dir", str(out / "runs"), "--device", "cpu"])
    return mod, record, out


@pytest.mark.slow
def test_every_method_and_seed_is_run_once(replicated):
    _, record, _ = replicated
    got = sorted((r["method"], r["seed"]) for r in record["runs"])
    assert got == sorted((m, s) for m in METHODS for s in range(SEEDS))
    assert record["finished"]


@pytest.mark.slow
def test_runs_carry_finite_metrics_in_their_ranges(replicated):
    _, record, _ = replicated
    for r in record["runs"]:
        assert 0.0 <= r["accuracy"] <= 1.0
        for m in ("answer_nll", "heldout_ce", "numeral_ce", "heldout_bpb"):
            assert math.isfinite(r[m]) and r[m] > 0, (r["method"], m, r[m])
        assert r["steps"] == 1
        assert r["heldout_tokens"] > 0
    # the P-KL student projects through W: the teacher mass no student row reaches is reported
    assert all(r["unreachable_mass_last"] is not None for r in record["runs"] if r["method"] == "pkl")


@pytest.mark.slow
def test_summary_is_mean_and_spread_over_the_seeds(replicated):
    _, record, _ = replicated
    for method in METHODS:
        cell = record["summary"]["pkl"][method]
        for metric, stats in cell.items():
            values = [r[metric] for r in sorted(record["runs"], key=lambda r: r["seed"]) if r["method"] == method]
            assert stats["n"] == SEEDS and stats["values"] == pytest.approx(values)
            assert stats["mean"] == pytest.approx(sum(values) / SEEDS)
            sd = math.sqrt(sum((v - stats["mean"]) ** 2 for v in values) / (SEEDS - 1))
            assert stats["spread"] == pytest.approx(sd)


@pytest.mark.slow
def test_printed_table_has_a_row_per_method(replicated):
    _, record, _ = replicated
    lines = [ln for ln in record["table"].splitlines() if ln.startswith("| pkl")]
    assert [ln.split("|")[3].strip() for ln in lines] == ["CE only", "ULD", "GOLD", "H-KL", "P-KL"]
    assert all(" ± " in ln for ln in lines)


@pytest.mark.slow
def test_pkl_minus_gold_is_paired_by_seed(replicated):
    _, record, _ = replicated
    by = {(r["method"], r["seed"]): r for r in record["runs"]}
    comp = next(c for c in record["comparisons"] if c["a"] == "pkl" and c["metric"] == "answer_nll")
    assert comp["seeds"] == list(range(SEEDS))
    assert comp["values"] == pytest.approx([by[("pkl", s)]["answer_nll"] - by[("gold", s)]["answer_nll"]
                                            for s in range(SEEDS)])


@pytest.mark.slow
def test_outputs_are_written(replicated):
    _, record, out = replicated
    on_disk = json.loads((out / "replicate.json").read_text())
    assert on_disk["finished"] and len(on_disk["runs"]) == len(record["runs"])
    assert (out / "replicate.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plotly" in (out / "replicate.html").read_text()
    # run directories keep their metrics but not the checkpoints
    for r in record["runs"]:
        assert (Path(r["run_dir"]) / "metrics.jsonl").is_file()
        assert not (Path(r["run_dir"]) / "checkpoints").exists()


def test_unknown_method_is_refused_with_the_valid_names():
    mod = _replicate()
    with pytest.raises(SystemExit, match="methods: ce, uld, gold, hkl, pkl"):
        mod.main(["--quick", "--methods", "pkl,kl"])
