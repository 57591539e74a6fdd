"""Runs with the real pretrained models (SmolLM2-135M-Instruct, Gemma-3-270M) and the run's one schema."""

import argparse
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from xtok_core.cli import build_parser, main
from xtok_core.distill import DistillConfig, run_distillation
from xtok_core.distill import loop as loop_module
from xtok_core.distill import objective as objective_module
from xtok_core.distill.rundir import RunDir

REPO = Path(__file__).resolve().parents[1]
TINY = ["--batch-size", "2", "--seq-len", "24", "--tiny-dim", "32", "--tiny-layers", "2", "--no-progress"]


def _distill_parser() -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices["distill"]


def test_cli_options_are_exactly_the_config_fields():
    own = {"help", "config", "no_progress", "out", "resume"}
    dests = {a.dest for a in _distill_parser()._actions} - own
    assert dests == {f.name for f in dataclasses.fields(DistillConfig)}
    # defaults and choices come from the dataclass: nothing given on the command line -> the dataclass defaults
    args = _distill_parser().parse_args(["--out", "x"])
    from xtok_core.distill.config import LOSSES, config_from_args

    assert config_from_args(args) == DistillConfig()
    loss = next(a for a in _distill_parser()._actions if a.dest == "loss")
    assert tuple(loss.choices) == LOSSES


def test_config_file_is_read_and_options_override_it(tmp_path):
    from xtok_core.distill.config import config_from_args

    f = tmp_path / "run.json"
    f.write_text(json.dumps({"steps": 7, "lr": 3e-4, "teachers": ["gemma3-270m"], "loss": "hkl"}))
    args = _distill_parser().parse_args(["--config", str(f), "--steps", "9", "--out", "x"])
    cfg = config_from_args(args, DistillConfig.from_file(f))
    assert (cfg.steps, cfg.lr, cfg.teachers, cfg.loss) == (9, 3e-4, ["gemma3-270m"], "hkl")
    f.write_text(json.dumps({"stepz": 7}))
    rc = main(["distill", "--config", str(f), "--out", str(tmp_path / "run")])
    assert rc == 2 and not (tmp_path / "run").exists()


def test_default_demo_pair_is_smollm2_into_tiny_llama_and_the_audit_says_pkl():
    from xtok_core.models import load_model

    cfg = DistillConfig()
    assert (cfg.student, cfg.teachers, cfg.loss) == ("tiny:llama-3.2", ["smollm2-135m-instruct"], "pkl")
    prep = loop_module.prepare(cfg.replace(loss="auto", tiny_dim=16, tiny_layers=1), log=lambda *a: None)
    assert prep.loss == "pkl" and "pkl" in prep.notes[0]
    w = prep.projections[0]
    assert w.shape == (prep.student.vocab_size, load_model("smollm2-135m-instruct").vocab_size)


@pytest.mark.slow
def test_default_demo_runs_with_the_real_teacher_and_trains_no_teacher(tmp_path):
    out = tmp_path / "demo"
    rc = main(["distill", *TINY, "--steps", "3", "--eval-every", "3", "--eval-size", "4", "--runs-dir", str(tmp_path / "runs"),
               "--out", str(out)])
    assert rc == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["teachers"] == ["smollm2-135m-instruct"] and cfg["loss"] == "pkl"
    rows = RunDir(out).read_metrics()
    assert [r["step"] for r in rows] == [0, 1, 2] and all(r["kd/t0"] > 0 and r["pairs/t0"] > 0 for r in rows)
    assert not (tmp_path / "runs" / "teachers").exists()
    last = rows[-1]
    for key in ("eval_ce", "eval_ce_per_byte", "eval_numeral_ce", "eval_top1_agreement/t0", "eval_accuracy"):
        assert last[key] is not None, key
    # a fresh tiny student knows nothing: CE near ln(128,256) = 11.8 nats per token, more than 1 nat per byte
    assert 8 < last["eval_ce"] < 14 and last["eval_ce_per_byte"] > 1
    assert 0 <= last["eval_top1_agreement/t0"] <= 1 and 0 <= last["eval_accuracy"] <= 1


@pytest.mark.slow
def test_kill9_then_resume_with_a_named_teacher(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "xtok_core", "distill", *TINY, "--teacher", "smollm2-135m-instruct", "--steps", "100",
           "--checkpoint-every", "2", "--eval-every", "0", "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run, t0 = RunDir(out), time.time()
    while len(run.read_metrics()) < 4:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 300
        time.sleep(0.3)
    proc.kill()
    proc.wait()
    before = {r["step"]: r for r in run.read_metrics()}
    k = int(run.latest_checkpoint().name.split("-")[1])
    rc = main(["distill", "--resume", str(out), "--steps", str(k + 3), "--no-progress"])
    assert rc == 0
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == list(range(k + 3)) and run.read_status()["state"] == "finished"
    if k + 1 in before:  # the step after the checkpoint is recomputed from the same weights and batch
        assert rows[k + 1]["loss"] == pytest.approx(before[k + 1]["loss"], rel=1e-4)


@pytest.mark.slow
def test_real_student_smollm2_with_gemma3_teacher(tmp_path):
    cfg = DistillConfig(student="smollm2-135m-instruct", teachers=["gemma3-270m"], steps=1, batch_size=1, seq_len=16,
                        lr=5e-5, eval_every=0, text_chars=40)
    result = run_distillation(cfg, tmp_path / "run", progress=False)
    assert result.state == "finished"
    row = result.metrics[0]
    assert row["kd/t0"] > 0 and row["ce"] < 12  # a pretrained student: far below ln(49152) = 10.8 + slack
    w = objective_module._W_CACHE[next(k for k in objective_module._W_CACHE if k[2:] == (49_152, 262_144))]
    assert w.shape == (49_152, 262_144)


@pytest.mark.slow
def test_stop_while_the_demo_teacher_trains_marks_the_run_stopped_and_keeps_the_teacher_checkpoint(tmp_path):
    out, runs = tmp_path / "run", tmp_path / "runs"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "xtok_core", "distill", *TINY, "--teacher", "tiny:qwen2.5", "--teacher-steps", "400",
           "--steps", "2", "--eval-every", "0", "--runs-dir", str(runs), "--out", str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.time()
    while not list(runs.glob("teachers/*/run/metrics.jsonl")) or not list(runs.glob("teachers/*/run/metrics.jsonl"))[0].read_text():
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < 240
        time.sleep(0.3)
    assert RunDir(out).read_status()["phase"] == "preparing"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 3
    status = RunDir(out).read_status()
    assert status["state"] == "stopped" and "demo teacher" in status["error"] and "--resume" in status["error"]
    teacher_run = RunDir(next(runs.glob("teachers/*/run")))
    assert teacher_run.read_status()["state"] == "stopped" and teacher_run.latest_checkpoint() is not None
