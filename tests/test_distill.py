"""Distillation runs on tiny models with the real bundled tokenizers (Llama-3 student, Qwen2.5 teacher)."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from xtok_core.corpus import arithmetic_eval_set, generate_corpus, sample_texts
from xtok_core.distill import DistillConfig, RunHooks, resume_distillation, run_distillation
from xtok_core.distill import loop as loop_module
from xtok_core.distill import objective as objective_module
from xtok_core.distill.evaluate import arithmetic_accuracy
from xtok_core.distill.models import build_tiny, load_model_dir, save_model_dir
from xtok_core.distill.rundir import RunDir
from xtok_core.errors import XtokError

STEP_KEYS = {"step", "loss", "ce", "kd", "lambda", "lr", "tokens_per_s", "wall_time", "elapsed", "step_time", "on_policy"}
# tiny enough that a KD step over 128k x 151k vocabularies takes about a second on 2 CPU cores
SMALL = dict(student="tiny:llama-3.2", teachers=["tiny:qwen2.5"], batch_size=2, seq_len=24, tiny_dim=32, tiny_layers=2,
             train_demo_teacher=False, warmup=1, lr=1e-2, eval_every=0, text_chars=60)
CLI_SMALL = ["--student", "tiny:llama-3.2", "--teacher", "tiny:qwen2.5", "--random-teacher", "--batch-size", "2",
             "--seq-len", "24", "--tiny-dim", "32", "--tiny-layers", "2", "--eval-every", "0", "--no-progress"]
REPO = Path(__file__).resolve().parents[1]


def small(**changes) -> DistillConfig:
    return DistillConfig(**{**SMALL, **changes})


def env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


# ------------------------------------------------------------------------------------------ corpus
def test_corpus_is_deterministic_and_covers_numerals_prices_dates_code():
    a, b = generate_corpus(400, seed=3), generate_corpus(400, seed=3)
    assert a == b and a != generate_corpus(400, seed=4)
    text = "\n".join(a)
    assert re.search(r"\d{3,} \+ \d+ = \d+", text)
    assert re.search(r"\$\d{1,3}(,\d{3})*\.\d\d", text)
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d", text)
    assert "\n        " in text  # indented code
    assert 30_000 <= len("\n\n".join(sample_texts()).encode()) <= 60_000


def test_arithmetic_eval_set_is_correct_and_never_in_training_text():
    pairs = arithmetic_eval_set(300, seed=7)
    assert len({p for p, _ in pairs}) == 300
    for prompt, answer in pairs:
        a, b = map(int, prompt[:-2].split(" + "))
        assert answer == f" {a + b}"
    train = set(re.findall(r"(?m)^(\d+ \+ \d+ =)", "\n".join(generate_corpus(20_000, seed=0) + sample_texts())))
    assert train and not train & {p for p, _ in pairs}


class _Oracle(torch.nn.Module):
    """A stand-in model whose greedy output is the right sum for every other prompt."""

    def __init__(self, tok):
        super().__init__()
        self.tok = tok

    def generate(self, input_ids, attention_mask, max_new_tokens, **kw):
        rows = []
        for i, ids in enumerate(input_ids.tolist()):
            prompt = self.tok.decode([t for t, m in zip(ids, attention_mask[i].tolist()) if m])
            a, b = map(int, prompt[:-2].split(" + "))
            answer = f" {a + b if i % 2 == 0 else a + b + 1}\n\n42"
            new = self.tok.encode(answer).ids.tolist()[:max_new_tokens]
            rows.append(ids + new + [0] * (max_new_tokens - len(new)))
        return torch.tensor(rows)


def test_arithmetic_accuracy_is_exact_match_up_to_the_newline(tok):
    out = arithmetic_accuracy(_Oracle(tok("qwen2.5")), tok("qwen2.5"), n=16, batch_size=16)
    assert out["accuracy"] == 0.5 and out["n"] == 16


# ------------------------------------------------------------------------------------------ overfit
_RUNS: dict = {}


def _overfit(loss, tmp_path_factory):
    if loss not in _RUNS:
        cfg = small(loss=loss, steps=5, fixed_batch=True, checkpoint_every=5, teachers=[] if loss == "ce" else SMALL["teachers"])
        _RUNS[loss] = run_distillation(cfg, tmp_path_factory.mktemp(f"overfit-{loss}"), progress=False)
    return _RUNS[loss]


@pytest.mark.parametrize("loss", ["pkl", "hkl", "gold", "uld", "ce"])
def test_each_loss_overfits_a_fixed_batch(loss, tmp_path_factory):
    m = _overfit(loss, tmp_path_factory).metrics
    assert len(m) == 5
    assert m[-1]["loss"] < m[0]["loss"]
    assert m[-1]["ce"] < m[0]["ce"]
    if loss != "ce":
        assert m[-1]["kd"] < m[0]["kd"], [r["kd"] for r in m]
        if m[0]["kd"] > 0:  # dynamic scaling λ = CE/KD (the loss sets λ = 0 when KD is not positive)
            assert m[0]["lambda"] == pytest.approx(m[0]["ce"] / m[0]["kd"], rel=1e-4)


def test_metrics_lines_are_complete_json_one_per_step(tmp_path_factory):
    result = _overfit("pkl", tmp_path_factory)
    lines = (result.run_dir / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["step"] for r in rows] == list(range(5))
    for r in rows:
        assert STEP_KEYS <= set(r)
        assert all(isinstance(v, (int, float)) for v in r.values())
        assert r["tokens_per_s"] > 0 and 0 <= r["unreachable_mass/t0"] < 1
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["state"] == "finished" and status["step"] == 5 and status["checkpoint"] == "step-4"
    assert json.loads((result.run_dir / "config.json").read_text())["loss"] == "pkl"


def test_checkpoint_loads_with_safetensors_and_holds_the_final_weights(tmp_path_factory):
    result = _overfit("pkl", tmp_path_factory)
    ckpt = result.run_dir / "checkpoints" / (result.run_dir / "checkpoints" / "latest").read_text().strip()
    weights = load_file(str(ckpt / "model.safetensors"))
    state = result.student.model.state_dict()
    assert set(weights) <= set(state)
    for k, v in weights.items():
        assert torch.equal(v, state[k]), k
    opt = load_file(str(ckpt / "optimizer.safetensors"))
    assert any(k.endswith("exp_avg_sq") for k in opt) and json.loads((ckpt / "optimizer.json").read_text())["param_groups"]
    assert "torch_cpu" in load_file(str(ckpt / "rng.safetensors"))


def test_learned_w_is_trained_and_saved_with_the_checkpoint(tmp_path):
    result = run_distillation(small(loss="pkl", learnable_w=True, steps=2, fixed_batch=True, checkpoint_every=2), tmp_path,
                              progress=False)
    saved = load_file(str(tmp_path / "checkpoints" / "step-1" / "w.safetensors"))
    (name, logits), = saved.items()
    from xtok_core import load_tokenizer

    pair = (load_tokenizer("llama-3.2").sha256, load_tokenizer("qwen2.5").sha256)
    W = objective_module._W_CACHE[next(k for k in objective_module._W_CACHE if k[:2] == pair)]  # other tests cache other pairs
    assert logits.shape == (W.matrix.nnz,)
    assert not torch.allclose(logits, torch.from_numpy(W.matrix.data).clamp(min=1e-30).log())  # moved from log W


def test_two_teachers_weighted_by_alpha_one_through_w_one_with_the_students_tokenizer(tmp_path):
    cfg = small(teachers=["tiny:qwen2.5", "tiny:llama-3.2"], alphas=[0.7, 0.3], steps=1, checkpoint_every=1)
    row, = run_distillation(cfg, tmp_path, progress=False).metrics
    assert row["kd"] == pytest.approx(0.7 * row["kd/t0"] + 0.3 * row["kd/t1"], rel=1e-5)
    assert "unreachable_mass/t0" in row and "unreachable_mass/t1" not in row  # t1: direct KL, no W
    assert row["pairs/t1"] > row["pairs/t0"]  # every student position vs aligned group boundaries only


def test_teacher_topk_reaches_the_runs_pkl_term(tmp_path):
    """--teacher-topk is pkl_loss(teacher_topk=k) inside the run: k at the vocabulary gives the plain run's
    KD, a small k another one; the one-teacher-direct-KL case and the refusals are one line each."""
    base = small(steps=1, fixed_batch=True, loss="pkl")
    plain, = run_distillation(base, tmp_path / "plain", progress=False).metrics
    every, = run_distillation(base.replace(teacher_topk=10**6), tmp_path / "every", progress=False).metrics
    few, = run_distillation(base.replace(teacher_topk=2), tmp_path / "few", progress=False).metrics
    # float32 sums over a 151k-wide row: the same terms in another order at most
    assert every["kd"] == pytest.approx(plain["kd"], rel=1e-4)
    assert abs(few["kd"] - plain["kd"]) > 1e-3 * plain["kd"]
    for bad, match in [(dict(loss="hkl"), "P-KL's teacher top-k"), (dict(learnable_w=True), "fixed W"),
                       (dict(teacher_topk=0), "at least 1"), (dict(teacher_caches=["cache"]), "holds its own top-K")]:
        with pytest.raises(XtokError, match=match):
            small(**{"teacher_topk": 4, **bad})


# ------------------------------------------------------------------------------------------ on-policy
def test_on_policy_teacher_gets_its_own_tokenization_of_the_decoded_student_text(tok, tmp_path, monkeypatch):
    llama, qwen = tok("llama-3.2"), tok("qwen2.5")
    corpus_row = "347 + 1286 = 1633\n\nThe lamp costs $1,234.56."
    sampled = llama.encode(" 1633 and $1,234.56").ids.tolist()  # what the student "sampled"
    monkeypatch.setattr(loop_module, "TextBatches", lambda *a, **k: (lambda step: [corpus_row] * 2))
    monkeypatch.setattr(loop_module, "sample_continuations", lambda model, tok_, prompts, **kw: [sampled] * len(prompts))
    seen = {}

    def record(step, state):
        teacher = state["teachers"][0].model
        def keep_ids(module, args, kwargs):
            seen.setdefault("ids", kwargs["input_ids"].clone())

        teacher.register_forward_pre_hook(keep_ids, with_kwargs=True)

    run_distillation(small(loss="pkl", steps=1, on_policy_ratio=0.5, checkpoint_every=1, seq_len=64), tmp_path,
                     hooks=RunHooks(before_step=record), progress=False)
    sample_text = "347 + 1286 = 1633 and $1,234.56"
    want = qwen.encode(sample_text, add_special_tokens=True).ids.tolist()
    got = seen["ids"][0].tolist()
    assert got[:len(want)] == want
    # Qwen writes 1286 digit by digit; Llama's ids for it would be meaningless to this teacher
    assert [qwen.decode([i]) for i in want[5:9]] == ["1", "2", "8", "6"]
    assert want != llama.encode(sample_text).ids.tolist()
    # the corpus row (not sampled) reaches the teacher as its own tokenization of the raw text
    assert seen["ids"][1].tolist()[:len(qwen.encode(corpus_row).ids)] == qwen.encode(corpus_row).ids.tolist()


# ------------------------------------------------------------------------------------------ failures
def test_model_directory_without_config_fails_the_run_with_one_line(tmp_path):
    empty = tmp_path / "model"
    empty.mkdir()
    with pytest.raises(XtokError, match="no config.json"):
        run_distillation(small(student=str(empty), steps=2), tmp_path / "run", progress=False)
    status = RunDir(tmp_path / "run").read_status()
    assert status["state"] == "failed" and "config.json" in status["error"] and "\n" not in status["error"]
    assert (tmp_path / "run" / "metrics.jsonl").exists()


def test_cli_reports_a_failed_run_in_one_line(tmp_path, capsys):
    from xtok_core.cli import main

    (tmp_path / "model").mkdir()
    rc = main(["distill", "--student", str(tmp_path / "model"), "--loss", "ce", "--steps", "1", "--no-progress",
               "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and err.startswith("xtok distill: error:") and "config.json" in err


def test_teacher_whose_vocab_does_not_match_w_fails_the_run(tmp_path, projection):
    w_file = projection("llama-3.2", "qwen2.5").save(tmp_path / "W.safetensors")
    # a Qwen-tokenizer teacher with padded logits (151,936 like the released Qwen2.5 models)
    padded = build_tiny("tiny:qwen2.5", dim=16, layers=1)
    padded.model.resize_token_embeddings(151_936)
    save_model_dir(padded.model, padded.tok, tmp_path / "teacher")
    cfg = small(teachers=[str(tmp_path / "teacher")], projections=[str(w_file)], steps=2)
    with pytest.raises(XtokError, match="151,936"):
        run_distillation(cfg, tmp_path / "run", progress=False)
    status = RunDir(tmp_path / "run").read_status()
    assert status["state"] == "failed" and "rebuild W" in status["error"]


def test_out_of_memory_marks_the_run_failed_and_keeps_metrics_and_last_checkpoint(tmp_path):
    def oom_at_3(step, state):
        if step == 3:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.15 GiB total capacity)\nmore")

    with pytest.raises(XtokError, match="out of memory at step 3"):
        run_distillation(small(loss="ce", teachers=[], steps=6, checkpoint_every=2), tmp_path,
                         hooks=RunHooks(before_step=oom_at_3), progress=False)
    run = RunDir(tmp_path)
    status = run.read_status()
    assert status["state"] == "failed" and "--resume" in status["error"] and "\n" not in status["error"]
    assert status["checkpoint"] == "step-1"
    assert [r["step"] for r in run.read_metrics()] == [0, 1, 2]
    assert run.latest_checkpoint().name == "step-1"
    assert load_file(str(run.latest_checkpoint() / "model.safetensors"))


# ------------------------------------------------------------------------------------------ crash safety
def _start(args, out):
    return subprocess.Popen([sys.executable, "-m", "xtok_core", "distill", *CLI_SMALL, *args, "--out", str(out)],
                            env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for_lines(proc, run, n, timeout=180):
    t0 = time.time()
    while len(run.read_metrics()) < n:
        assert proc.poll() is None, proc.stdout.read()
        assert time.time() - t0 < timeout
        time.sleep(0.2)


@pytest.mark.slow
def test_sigterm_checkpoints_and_marks_the_run_stopped(tmp_path):
    run = RunDir(tmp_path / "run")
    proc = _start(["--loss", "ce", "--steps", "500", "--checkpoint-every", "100"], run.path)
    _wait_for_lines(proc, run, 3)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 3
    status, steps = run.read_status(), [r["step"] for r in run.read_metrics()]
    assert status["state"] == "stopped" and status["step"] == len(steps) and steps == list(range(len(steps)))
    assert run.latest_checkpoint().name == f"step-{steps[-1]}"


@pytest.mark.slow
def test_kill9_then_resume_loses_and_repeats_no_step_and_restores_the_checkpoint(tmp_path):
    run = RunDir(tmp_path / "run")
    proc = _start(["--loss", "pkl", "--steps", "200", "--checkpoint-every", "3", "--fixed-batch"], run.path)
    _wait_for_lines(proc, run, 8)
    proc.kill()
    proc.wait()
    before = {r["step"]: r for r in run.read_metrics()}
    ckpt = run.latest_checkpoint()
    k = int(ckpt.name.split("-")[1])
    assert len(before) > k + 1  # lines after the checkpoint exist and will be dropped
    saved = load_file(str(ckpt / "model.safetensors"))
    first = {}

    def capture(step, state):
        if not first:
            first["step"] = step
            first["state"] = {n: v.clone() for n, v in state["student"].model.state_dict().items()}

    result = resume_distillation(run.path, steps=k + 3, hooks=RunHooks(before_step=capture), progress=False)
    assert first["step"] == k + 1 and result.step == k + 3
    for name, v in saved.items():
        assert torch.equal(first["state"][name], v), name
    rows = run.read_metrics()
    assert [r["step"] for r in rows] == list(range(k + 3))
    assert [r["wall_time"] for r in rows[:k + 1]] == [before[s]["wall_time"] for s in range(k + 1)]  # kept as written
    # the resumed step k+1 recomputes what the killed process had logged: same weights, optimizer, batch
    assert rows[k + 1]["loss"] == pytest.approx(before[k + 1]["loss"], rel=1e-4)
    assert run.read_status()["state"] == "finished"


# ------------------------------------------------------------------------------------------ teachers
def test_demo_teacher_is_trained_once_then_reused(tmp_path, monkeypatch, tok):
    from xtok_core.distill import demo_teacher as teacher_module

    path = teacher_module.train_demo_teacher("qwen2.5", steps=2, dim=16, layers=1, runs_dir=str(tmp_path), progress=False,
                                        batch_size=2, seq_len=16, log=lambda *a: None)
    assert json.loads((path / "teacher.json").read_text())["steps"] == 2
    monkeypatch.setattr(loop_module, "run_distillation", lambda *a, **k: pytest.fail("retrained a cached teacher"))
    again = teacher_module.train_demo_teacher("qwen2.5", steps=2, dim=16, layers=1, runs_dir=str(tmp_path), progress=False,
                                         batch_size=2, seq_len=16)
    assert again == path
    loaded = load_model_dir(path)
    assert loaded.tok.sha256 == tok("qwen2.5").sha256 and loaded.vocab_size == tok("qwen2.5").vocab_size
    assert teacher_module.teacher_dir(teacher_module.teacher_config("qwen2.5", steps=3, dim=16, layers=1, runs_dir=str(tmp_path),
                                                                    batch_size=2, seq_len=16)) != path


def test_loss_auto_takes_the_audit_recommendation(tok):
    student = build_tiny("tiny:llama-3.2", dim=16, layers=1)
    teacher = build_tiny("tiny:qwen2.5", dim=16, layers=1)
    loss, note = objective_module.resolve_loss(small(loss="auto"), student, [teacher])
    assert loss == "pkl" and "pkl" in note  # Qwen splits every digit: P-KL


# ------------------------------------------------------------------------------------------ DDP
@pytest.mark.slow
def test_two_process_torchrun_gloo_ranks_agree(tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "xtok_core",
           "distill", *CLI_SMALL, "--loss", "pkl", "--steps", "3", "--checkpoint-every", "3", "--device", "cpu", "--out", str(out)]
    proc = subprocess.run(cmd, env=env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    replicas = [json.loads((out / "replicas" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert replicas[0]["step"] == replicas[1]["step"] == 3
    assert replicas[0]["fingerprint"] == replicas[1]["fingerprint"]
    rows = RunDir(out).read_metrics()
    assert [r["step"] for r in rows] == [0, 1, 2]
    # the checkpoint keeps each rank's own random generator (on-policy sampling differs per rank)
    rng = load_file(str(out / "checkpoints" / "step-2" / "rng.safetensors"))
    assert set(rng) == {"torch_cpu.rank0", "torch_cpu.rank1"}
    assert not torch.equal(rng["torch_cpu.rank0"], rng["torch_cpu.rank1"])
