"""xtok inside a Hugging Face Trainer: the collator, the Trainer's loss against `xtok distill`'s, logging,
checkpoints and resume, and launches under torchrun (tiny models, real bundled tokenizers)."""

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from xtok_core import bundled_tokenizers, load_tokenizer
from xtok_core.distill import DistillConfig, run_distillation
from xtok_core.distill.data import TextBatches
from xtok_core.distill.models import build_tiny
from xtok_core.errors import XtokError
from xtok_core.integrations.hf import CrossTokenizerCollator, CrossTokenizerDistillTrainer

transformers = pytest.importorskip("transformers")
EPS32 = torch.finfo(torch.float32).eps
TINY = dict(dim=32, layers=2)
TEXTS = ["The price is $1,299.99 on 2024-03-17 12:30.", "12345 + 678 = 13023", "def f(x):\n    return x * 2",
         "Distillation moves knowledge from a teacher to a student."]


def args(out, **changes):
    base = dict(output_dir=str(out), per_device_train_batch_size=2, learning_rate=1e-2, max_steps=3, logging_steps=1,
                save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0, warmup_steps=0)
    return transformers.TrainingArguments(**{**base, **changes})


def trainer(out, *, loss="pkl", seed=0, data=None, callbacks=None, **changes):
    student = build_tiny("tiny:llama-3.2", seed=seed, **TINY)
    teacher = build_tiny("tiny:qwen2.5", seed=seed + 1, **TINY)
    data = data if data is not None else [{"text": t} for t in TEXTS * 4]
    return CrossTokenizerDistillTrainer(model=student, teachers=[teacher], args=args(out, **changes), train_dataset=data,
                                        loss=loss, max_length=24, callbacks=callbacks)


def losses_tol(loss: float, n_terms: int) -> float:
    """fp32 reductions of n terms (logsumexp over the vocabulary, means over tokens and pairs)."""
    return n_terms * EPS32 * max(1.0, abs(loss))


# ------------------------------------------------------------------------------------------ collator
@pytest.mark.parametrize("module", ["xtok_core.integrations.collator", "xtok_core.integrations.hf", "xtok_core.distill"])
def test_each_module_imports_first_in_a_fresh_process(module):
    """The loop imports the collator and the collator uses the loop's data helpers: no import cycle,
    whichever a program (the example under torchrun, the CLI) imports first."""
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert done.returncode == 0, done.stderr[-1500:]


def test_collator_gives_each_teacher_its_own_ids_of_the_text():
    student, qwen, gemma = (load_tokenizer(n) for n in ("llama-3.2", "qwen2.5", "gemma"))
    batch = CrossTokenizerCollator(student, [qwen, gemma], max_length=4096)([{"text": t} for t in TEXTS])
    for m, teacher in enumerate((qwen, gemma)):
        t = batch["teacher_inputs"][m]
        for b, text in enumerate(TEXTS):
            own = teacher.encode(text, add_special_tokens=True).ids
            assert t["input_ids"][b][t["attention_mask"][b].bool()].tolist() == own.tolist()
    for b, text in enumerate(TEXTS):
        own = student.encode(text, add_special_tokens=True).ids.tolist()
        assert batch["input_ids"][b][batch["attention_mask"][b].bool()].tolist() == own
        assert batch["labels"][b][: len(own)].tolist() == own and (batch["labels"][b][len(own):] == -100).all()


def test_truncation_keeps_one_student_prefix_for_all_teachers():
    """Two teachers cut at their own group boundaries; the student batch is the prefix both keep, and each
    teacher's kept ids are a prefix of its own encoding, covering no more text than the student."""
    student, qwen, gemma = (load_tokenizer(n) for n in ("llama-3.2", "qwen2.5", "gemma"))
    col = CrossTokenizerCollator(student, [qwen, gemma], max_length=7)
    batch = col([{"text": t} for t in TEXTS])
    alignments = col.alignments(batch)
    s_len = batch["attention_mask"].sum(1)
    for v in alignments:
        assert torch.equal(v.student_ids, batch["input_ids"]) and torch.equal(v.student_mask.sum(1), s_len)
        assert (v.student_group[~v.student_mask] == -1).all() and (v.teacher_group[~v.teacher_mask] == -1).all()
    for m, teacher in enumerate((qwen, gemma)):
        t = batch["teacher_inputs"][m]
        for b, text in enumerate(TEXTS):
            kept = t["input_ids"][b][t["attention_mask"][b].bool()].tolist()
            own = teacher.encode(text, add_special_tokens=True)
            assert kept == own.ids[: len(kept)].tolist()
            # a kept teacher token ends within the student's kept bytes
            s_own = student.encode(text, add_special_tokens=True)
            s_bytes = int(s_own.offsets[: int(s_len[b])][:, 1].max())
            assert len(kept) == 0 or int(own.offsets[: len(kept)][:, 1].max()) <= s_bytes
    s_logits = torch.randn(*batch["input_ids"].shape, student.vocab_size)
    t_logits = [torch.randn(*t["input_ids"].shape, tk.vocab_size) for t, tk in zip(batch["teacher_inputs"], (qwen, gemma))]
    from xtok_core.losses.positions import aligned_rows

    for z, v in zip(t_logits, alignments):
        rows = aligned_rows(s_logits, z, v)
        assert rows.student.shape[0] == rows.teacher.shape[0] > 0


PAIRS = list(itertools.permutations(bundled_tokenizers(), 2))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(texts=st.lists(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
                      min_size=1, max_size=3),
       max_length=st.integers(2, 40))
def test_collator_never_gives_a_teacher_an_id_outside_its_vocabulary(texts, max_length):
    for pair in PAIRS:  # every ordered pair of bundled tokenizers, on every generated batch
        student, teacher = (load_tokenizer(n) for n in pair)
        batch = CrossTokenizerCollator(student, [teacher], max_length=max_length)([{"text": t} for t in texts])
        t = batch["teacher_inputs"][0]
        kept = t["input_ids"][t["attention_mask"].bool()]
        assert ((kept >= 0) & (kept < teacher.vocab_size)).all(), pair
        s_kept = batch["input_ids"][batch["attention_mask"].bool()]
        assert ((s_kept >= 0) & (s_kept < student.vocab_size)).all(), pair
        assert batch["attention_mask"].shape[1] <= max_length and t["attention_mask"].shape[1] <= max_length
        for b, text in enumerate(texts):  # the teacher's ids are its own tokenization of the text, never the student's
            row = t["input_ids"][b][t["attention_mask"][b].bool()].tolist()
            assert row == teacher.encode(text, add_special_tokens=True).ids[: len(row)].tolist(), pair


def test_chat_collator_trains_only_assistant_content_and_gives_each_teacher_its_own_template():
    from xtok_core.chat import render_chat
    from xtok_core.corpus import generate_chat

    student, qwen = load_tokenizer("llama-3.2"), load_tokenizer("qwen2.5")
    convs = generate_chat(3, seed=1)
    batch = CrossTokenizerCollator(student, [qwen], max_length=512, chat=True)([{"messages": c} for c in convs])
    t = batch["teacher_inputs"][0]
    for b, msgs in enumerate(convs):
        own_t, own_s = render_chat(msgs, qwen), render_chat(msgs, student)
        assert t["input_ids"][b][t["attention_mask"][b].bool()].tolist() == list(own_t.ids)
        assert batch["input_ids"][b][batch["attention_mask"][b].bool()].tolist() == list(own_s.ids)
        trained = batch["labels"][b][batch["labels"][b] != -100].tolist()
        text = student.decode(trained)
        for m in msgs:  # every assistant content is trained, no user content is
            assert (m["content"].strip() in text) == (m["role"] == "assistant"), (m["role"], text)
    al = CrossTokenizerCollator.alignments(batch)[0]
    assert al.group_mask.any()


def test_trainer_steps_on_conversations(tmp_path):
    from xtok_core.corpus import generate_chat

    logs = _Logs()
    rows = [{"messages": c} for c in generate_chat(4, seed=2)]
    tr = CrossTokenizerDistillTrainer(model=build_tiny("tiny:llama-3.2", **TINY), teachers=[build_tiny("tiny:qwen2.5", **TINY)],
                                      args=args(tmp_path, max_steps=2), train_dataset=rows, chat=True, max_length=256,
                                      callbacks=[logs])
    tr.train()
    steps = [r for r in logs.logs if "ce" in r]
    assert len(steps) == 2 and all(r["pairs/t0"] > 0 and math.isfinite(r["kd"]) for r in steps)


def test_collator_names_the_row_without_text():
    col = CrossTokenizerCollator("llama-3.2", ["qwen2.5"], max_length=16)
    with pytest.raises(XtokError, match=r"example 1 has no 'text' string \(keys: \['prompt'\]\)"):
        col([{"text": "ok"}, {"prompt": "no text here"}])


def test_collator_refuses_ids_outside_a_teachers_logits():
    student = build_tiny("tiny:llama-3.2", **TINY)
    teacher = build_tiny("tiny:qwen2.5", **TINY)
    teacher.model.resize_token_embeddings(1000)  # a model narrower than its tokenizer
    col = CrossTokenizerCollator(student, [teacher], max_length=32)
    with pytest.raises(XtokError, match="outside its 1,000 logits"):
        col([{"text": "Distillation moves knowledge"}])


def test_trainer_refuses_a_w_built_for_another_teacher(tmp_path, projection):
    with pytest.raises(XtokError, match="W was built for teacher"):
        CrossTokenizerDistillTrainer(model=build_tiny("tiny:llama-3.2", **TINY), teachers=[build_tiny("tiny:qwen2.5", **TINY)],
                                     projections=[projection("llama-3.2", "gemma")], args=args(tmp_path),
                                     train_dataset=[{"text": "x"}], max_length=16)


# ------------------------------------------------------------------------------------------ one loss
@pytest.mark.parametrize("loss", ["pkl", "gold"])
def test_compute_loss_equals_the_distill_loops_loss_on_the_same_batch(loss, tmp_path):
    cfg = DistillConfig(student="tiny:llama-3.2", teachers=["tiny:qwen2.5"], loss=loss, steps=1, batch_size=2, seq_len=24,
                        tiny_dim=32, tiny_layers=2, train_demo_teacher=False, eval_every=0, text_chars=60, corpus_lines=200,
                        checkpoint_every=1, seed=3)
    row = run_distillation(cfg, tmp_path / "run", progress=False).metrics[0]
    texts = TextBatches(cfg.corpus_lines, cfg.text_chars, cfg.batch_size, cfg.seed)(0)
    student = build_tiny(cfg.student, dim=cfg.tiny_dim, layers=cfg.tiny_layers, seed=cfg.seed)
    teacher = build_tiny(cfg.teachers[0], dim=cfg.tiny_dim, layers=cfg.tiny_layers, seed=cfg.seed)
    tr = CrossTokenizerDistillTrainer(model=student, teachers=[teacher], args=args(tmp_path / "hf"), loss=loss,
                                      max_length=cfg.seq_len, train_dataset=[{"text": t} for t in texts])
    batch = tr._prepare_inputs(tr.data_collator([{"text": t} for t in texts]))
    student.model.train()
    got = tr.compute_loss(student.model, batch)
    stats = tr.distill_loss.last_stats
    n_terms = student.vocab_size + int(batch["attention_mask"].sum())
    for key, value in (("loss", float(got.detach())), ("ce", float(stats["ce"])), ("kd", float(stats["kd"]))):
        assert value == pytest.approx(row[key], abs=losses_tol(row[key], n_terms)), key
    assert stats["pairs/t0"] == row["pairs/t0"] > 0


# ------------------------------------------------------------------------------------------ the Trainer
class _Logs(transformers.TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kw):
        self.logs.append(dict(logs or {}, step=state.global_step))


def test_trainer_logs_ce_kd_lambda_and_unreachable_mass_averaged_over_the_interval(tmp_path):
    every, pairs = _Logs(), _Logs()
    trainer(tmp_path / "a", callbacks=[every]).train()
    trainer(tmp_path / "b", callbacks=[pairs], logging_steps=2, max_steps=2).train()
    per_step = [r for r in every.logs if "ce" in r]
    assert [r["step"] for r in per_step] == [1, 2, 3]
    for r in per_step:
        assert {"ce", "kd", "lambda", "kd/t0", "pairs/t0", "unreachable_mass/t0"} <= set(r)
        assert 0 <= r["unreachable_mass/t0"] < 1 and r["lambda"] == pytest.approx(r["ce"] / r["kd"], rel=1e-5)
    (two,) = [r for r in pairs.logs if "ce" in r]
    for k in ("ce", "kd", "lambda", "unreachable_mass/t0"):
        want = (per_step[0][k] + per_step[1][k]) / 2
        assert two[k] == pytest.approx(want, abs=losses_tol(want, 128_256 + 48)), k


def test_teachers_are_frozen_in_eval_mode_and_not_in_checkpoints(tmp_path):
    tr = trainer(tmp_path, max_steps=2, save_strategy="steps", save_steps=2)
    before = [p.detach().clone() for p in tr.teachers[0].model.parameters()]
    tr.train()
    teacher = tr.teachers[0].model
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "checkpoint-2" / "model.safetensors"))
    student_keys = set(tr.model.state_dict())
    assert set(saved) <= student_keys
    assert sum(v.numel() for v in saved.values()) < sum(p.numel() for p in tr.model.parameters()) + 1
    opt = torch.load(tmp_path / "checkpoint-2" / "optimizer.pt", weights_only=True)
    n_student = len([p for p in tr.model.parameters() if p.requires_grad])
    assert len(opt["state"]) == n_student


def test_resume_from_checkpoint_continues_the_same_loss_curve(tmp_path):
    full, resumed = _Logs(), _Logs()
    trainer(tmp_path / "full", callbacks=[full], max_steps=4, save_strategy="steps", save_steps=2).train()
    # a fresh process state: other initial weights, which the checkpoint replaces
    trainer(tmp_path / "resumed", callbacks=[resumed], max_steps=4, seed=7).train(
        resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-2"))
    a = {r["step"]: r for r in full.logs if "ce" in r}
    b = {r["step"]: r for r in resumed.logs if "ce" in r}
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        for k in ("loss", "ce", "kd"):
            assert b[step][k] == pytest.approx(a[step][k], abs=losses_tol(a[step][k], 128_256 + 48)), (step, k)
    assert a[4]["loss"] != pytest.approx(a[2]["loss"], abs=1e-6)  # the curve moves, so matching it means something


def test_gradient_accumulation_averages_micro_batch_losses(tmp_path):
    """bs 1 x 2 accumulation steps reports the mean of the two micro-batch losses, as bs 1 runs see them."""
    one, acc = _Logs(), _Logs()
    trainer(tmp_path / "one", callbacks=[one], per_device_train_batch_size=1, max_steps=2, learning_rate=0.0).train()
    trainer(tmp_path / "acc", callbacks=[acc], per_device_train_batch_size=1, gradient_accumulation_steps=2,
            max_steps=1, learning_rate=0.0).train()
    micro = [r["loss"] for r in one.logs if "ce" in r]
    (got,) = [r["loss"] for r in acc.logs if "ce" in r]
    assert got == pytest.approx(sum(micro) / 2, abs=losses_tol(max(micro), 128_256 + 24))
    assert not math.isclose(micro[0], micro[1])


# ------------------------------------------------------------------------------------------ the real teacher
@pytest.fixture(scope="module")
def smollm2():
    from xtok_core import load_model

    return load_model("smollm2-135m-instruct")


def test_three_trainer_steps_with_smollm2_lower_the_kd_term_on_a_fixed_batch(tmp_path, smollm2):
    student = build_tiny("tiny:llama-3.2", seed=0, **TINY)
    fixed = [{"text": t} for t in TEXTS[:2]]
    tr = CrossTokenizerDistillTrainer(model=student, teachers=[smollm2], args=args(tmp_path, learning_rate=3e-2),
                                      train_dataset=fixed * 3, loss="pkl", max_length=32)
    batch = tr._prepare_inputs(tr.data_collator(fixed))

    def kd():
        with torch.no_grad():
            tr.compute_loss(tr.model.eval(), batch)
        return tr.distill_loss.last_stats

    before = kd()
    tr.train()
    after = kd()
    assert before["pairs/t0"] == after["pairs/t0"] > 0
    assert after["kd"] < before["kd"], (before["kd"], after["kd"])
    assert 0 <= after["unreachable_mass/t0"] < 1


# ------------------------------------------------------------------------------------------ launchers
REPO = Path(__file__).resolve().parents[1]
LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"],
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"],
}


@pytest.mark.slow
@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_example_under_two_ranks_reads_different_data_and_keeps_identical_weights(launcher, tmp_path, smollm2):
    """The example, as a user runs it (SmolLM2 teacher, gloo on CPU), 3 steps on 2 ranks; a probe records
    each rank's ids per step and a fingerprint of the student's weights after every optimizer step."""
    from xtok_core.corpus import sample_texts

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in sample_texts()[:48]))
    port = ["--main_process_port", str(_free_port())] if launcher == "accelerate" else []
    cmd = [*LAUNCHERS[launcher], *port, str(REPO / "tests" / "hf_probe.py"), str(tmp_path / "probe"),
           str(REPO / "examples" / "hf_trainer_distill.py"), str(data), str(tmp_path / "run"),
           "--max-steps", "3", "--batch-size", "2", "--max-length", "32"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [[json.loads(line) for line in (tmp_path / "probe" / f"rank-{r}.jsonl").read_text().splitlines()]
             for r in (0, 1)]
    for r in ranks:
        assert [s["step"] for s in r] == [1, 2, 3] and {s["wrapper"] for s in r} == {"DistributedDataParallel"}
    for step in range(3):
        a, b = ranks[0][step], ranks[1][step]
        assert a["fingerprint"] == b["fingerprint"], step       # DDP: the same weights after every step
        assert len(a["ids"]) == len(b["ids"]) == 2
        assert not {tuple(x) for x in a["ids"]} & {tuple(x) for x in b["ids"]}, step  # each rank its own rows
    assert len({tuple(s["fingerprint"]) for s in ranks[0]}) == 3  # and the weights did move
    assert (tmp_path / "run" / "model.safetensors").is_file()


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_bf16_mixed_precision_runs_student_and_teacher_under_autocast(tmp_path):
    seen = {}
    tr = trainer(tmp_path, bf16=True, max_steps=1)
    hook = tr.teachers[0].model.lm_head.register_forward_hook(lambda m, i, o: seen.setdefault("teacher", o.dtype) and None)
    tr.model.lm_head.register_forward_hook(lambda m, i, o: seen.setdefault("student", o.dtype) and None)
    tr.train()
    hook.remove()
    assert seen == {"teacher": torch.bfloat16, "student": torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in tr.model.parameters())  # master weights stay fp32
    (row,) = [r for r in tr.state.log_history if "ce" in r]
    assert math.isfinite(row["loss"]) and row["pairs/t0"] > 0
