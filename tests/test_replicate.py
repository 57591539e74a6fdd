"""The mini-replication benchmark's quick path at a tiny size: real tokenizers, real teacher, real runs."""

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ce", "uld", "gold", "hkl", "pkl")
SEEDS = 2


def _bench(module: str, file: str):
    """A bench script imported as a module (once per session)."""
    if module not in sys.modules:
        spec = importlib.util.spec_from_file_location(module, ROOT / "bench" / file)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[module] = mod  # dataclasses look their module up while the file executes
        spec.loader.exec_module(mod)
    return sys.modules[module]


def _replicate():
    return _bench("bench_replicate", "replicate.py")


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
    # the chart decodes to an image of the size it was drawn at (18 x 4.2 in at 90 dpi), not a blank canvas
    import matplotlib.image

    img = matplotlib.image.imread(out / "replicate.png")
    assert img.shape[:2] == (round(4.2 * 90), 18 * 90)
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10
    # run directories keep their metrics but not the checkpoints
    for r in record["runs"]:
        assert (Path(r["run_dir"]) / "metrics.jsonl").is_file()
        assert not (Path(r["run_dir"]) / "checkpoints").exists()


def test_unknown_method_is_refused_with_the_valid_names():
    mod = _replicate()
    with pytest.raises(SystemExit, match="methods: ce, uld, gold, hkl, pkl"):
        mod.main(["--quick", "--methods", "pkl,kl"])


# ------------------------------------------------------------------------ real teachers (bench/replicate_real.py)
REAL_REGIMES = ("pkl", "hkl", "real")
REAL_METHODS = ("ce", "uld", "gold", "gold-trl", "hkl", "pkl", "pkl-onpolicy")


def _replicate_real():
    sys.path.insert(0, str(ROOT / "bench"))
    sys.modules.setdefault("replicate", _replicate())  # the real bench imports its helpers: one copy of them
    return _bench("bench_replicate_real", "replicate_real.py")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """The quick path at a tiny size: the real SmolLM2 and Gemma-3 teachers from small caches, one seed,
    every regime and method (batch 2 so that the on-policy run samples one row per step)."""
    out = tmp_path_factory.mktemp("replicate-real")
    mod = _replicate_real()
    record = mod.main(["--quick", "--seeds", "1", "--steps", "2", "--real-steps", "1", "--batch-size", "2",
                       "--real-batch", "1", "--seq-len", "16", "--real-seq-len", "16", "--heldout-texts", "2",
                       "--eval-size", "2", "--dim", "16", "--layers", "1", "--sample-lengths", "2,4", "--prompts", "2",
                       "--corpus-lines", "40", "--out", str(out), "--cache-dir", str(out / "caches"), "--device", "cpu"])
    return mod, record, out


@pytest.mark.slow
def test_real_every_regime_and_method_has_every_metric(real_run):
    mod, record, _ = real_run
    got = sorted((r["regime"], r["method"]) for r in record["runs"])
    want = sorted((g, m) for g in REAL_REGIMES for m in REAL_METHODS if m != "pkl-onpolicy" or g == "pkl")
    assert got == want and record["finished"]
    for r in record["runs"]:
        for m in ("ce_bpb", "ce_token", "numeral_ce", "answer_nll"):
            assert math.isfinite(r[m]) and r[m] > 0, (r["regime"], r["method"], m)
        assert 0.0 <= r["top1_agree"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
    assert set(record["teacher_eval"]) == set(REAL_REGIMES)


@pytest.mark.slow
def test_real_table_numbers_are_recomputed_from_the_json(real_run):
    mod, _, out = real_run
    record = json.loads((out / "replicate-real.json").read_text())
    lines = (out / "replicate-real.md").read_text().splitlines()
    rows = {}
    for ln in lines:
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        if len(cells) == 4 + len(mod.METRICS) and cells[2] in mod.LABELS.values():
            rows[(cells[0], cells[2])] = cells[4:]
    assert len(rows) == len(record["runs"])  # one seed: one row per run
    label = {v: k for k, v in mod.LABELS.items()}
    for (regime, name), cells in rows.items():
        runs = [r for r in record["runs"] if r["regime"] == regime and r["method"] == label[name]]
        for metric, cell in zip(mod.METRICS, cells):
            v = np.array([r[metric] for r in runs], dtype=float)
            scale, digits = (100.0, 1) if metric in mod.PERCENT else (1.0, 3)
            assert cell == f"{scale * v.mean():.{digits}f} ± {0.0:.{digits}f}", (regime, name, metric)


@pytest.mark.slow
def test_real_teacher_cache_holds_every_training_text(real_run):
    from xtok_core.teacher_cache import TeacherCache

    mod, record, _ = real_run
    setting = mod.replace(mod.SETTINGS["quick"], **{k: record["sizes"][k] for k in record["sizes"] if k != "regimes"})
    for tname, info in record["teacher_cache"].items():
        cache = TeacherCache.open(info["dir"])
        regimes = [g for g in REAL_REGIMES if mod.REGIMES[g].teacher == tname]
        texts = {t for g in regimes for t in mod.training_texts(mod.run_config(setting, g, "pkl", 0))}
        texts |= set(mod.heldout_texts(setting.heldout_texts))
        assert len(cache) == len(texts) == info["texts"]
        assert all(cache.example(t)["ids"].numel() > 0 for t in texts)


@pytest.mark.slow
def test_real_charts_draw_the_summary(real_run):
    import matplotlib.image

    mod, record, out = real_run
    drawn = record["charts"]
    for metric in mod.METRICS:
        scale = 100.0 if metric in mod.PERCENT else 1.0
        for regime in REAL_REGIMES:
            want = [record["summary"][regime][m][metric]["mean"] * scale if m in record["summary"][regime] else None
                    for m in record["methods"]]
            got = drawn["bars"][metric][regime]
            assert [None if np.isnan(g) else pytest.approx(g) for g in got] == want
    for m in ("pkl", "pkl-onpolicy"):
        run = next(r for r in record["runs"] if r["method"] == m)
        assert drawn["exposure"][m] == pytest.approx([run["exposure"][str(L)] for L in (2, 4)])
    img = matplotlib.image.imread(out / "replicate-real.png")
    assert img.shape[:2] == (round(4.4 * 80), round(4.2 * len(mod.METRICS) * 80))
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10
    assert matplotlib.image.imread(out / "replicate-real-exposure.png").shape[:2] == (4 * 80, 6 * 80)


def test_prefix_agreement_between_real_tokenizers(tok):
    """Top-1 agreement: Llama-3's "123" and SmolLM2's "1" predict the same next text; "123" and "2" do not."""
    mod = _replicate_real()
    import glob

    llama = tok("llama-3.2")
    smol_dirs = glob.glob(str(Path.home() / ".cache" / "xtok" / "models" / "smollm2-135m-instruct-*"))
    if not smol_dirs:
        from xtok_core.models import load_model

        smol = load_model("smollm2-135m-instruct").tok
    else:
        smol = tok(smol_dirs[0])
    a = int(llama.encode("123").ids[0])
    one, two = (int(smol.encode(d).ids[0]) for d in ("1", "2"))
    got = mod._prefix_agree(llama, np.array([a, a, a]), smol, np.array([one, two, one]))
    assert got.tolist() == [True, False, True]


def test_ties_are_differences_within_the_seed_spread():
    mod = _replicate_real()
    cell = lambda mean, spread: {"mean": mean, "spread": spread, "n": 3}  # noqa: E731
    summary = {"pkl": {"pkl": {"ce_bpb": cell(1.0, 0.1), "accuracy": cell(0.5, 0.01)},
                       "gold": {"ce_bpb": cell(1.05, 0.02), "accuracy": cell(0.4, 0.02)},
                       "gold-trl": {"ce_bpb": cell(1.3, 0.05), "accuracy": cell(0.6, 0.01)}}}
    got = {(c["b"], c["metric"]): c["verdict"] for c in mod.compare(summary, ["pkl"], ["pkl", "gold", "gold-trl"])}
    assert got == {("gold", "ce_bpb"): "tie", ("gold", "accuracy"): "P-KL",
                   ("gold-trl", "ce_bpb"): "P-KL", ("gold-trl", "accuracy"): "GOLD (TRL hybrid)"}
