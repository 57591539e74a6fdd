"""Teacher cache: built once, resumed after a kill -9, refused when it does not fit the run."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from xtok_core.errors import XtokError
from xtok_core.teacher_cache import TeacherCache, build_teacher_cache, sha256_file

TEXTS = [f"{i} plus {2 * i + 1} is {3 * i + 1}; the {i}th line of the cache test, café {i % 7}." for i in range(22)]
TINY = dict(dim=32, layers=2)
WHOLE = dict(seq_len=64, heldout_fraction=0.0)  # every document is one window: the examples are TEXTS
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def teacher():
    from xtok_core.models import load_model

    return load_model("tiny:gpt2", tiny_dim=TINY["dim"], tiny_layers=TINY["layers"])


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "data.txt"
    p.write_text("\n\n".join(TEXTS) + "\n", encoding="utf-8")  # documents separated by blank lines
    return p


@pytest.fixture(scope="module")
def cache(teacher, data_file, tmp_path_factory):
    return build_teacher_cache(teacher, data_file, tmp_path_factory.mktemp("c") / "cache", top_k=teacher.vocab_size,
                               dtype="float32", shard_size=8, batch_size=3, max_length=24, show_progress=False, **WHOLE)


def test_cache_holds_the_teachers_ids_top_k_and_tail_per_teacher_token(teacher, data_file, tmp_path):
    calls = []
    c = build_teacher_cache(teacher, data_file, tmp_path / "c", top_k=5, temperature=2.0, dtype="float32",
                            shard_size=8, batch_size=3, max_length=12, show_progress=False,
                            progress=lambda f, m: calls.append((f, m)), **WHOLE)
    m = json.loads((tmp_path / "c" / "manifest.json").read_text())
    assert m["complete"] and [s["count"] for s in m["shards"]] == [8, 8, 6] and m["top_k"] == 5
    assert m["data_sha256"] == sha256_file(data_file) and m["tokenizer_sha256"] == teacher.tok.sha256
    assert calls[-1][0] == 1.0 and all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    text = TEXTS[9]
    ex = c.example(text)
    ids = teacher.tok.encode(text, add_special_tokens=True).ids[:12]
    assert ex["ids"].tolist() == list(ids)
    with torch.no_grad():
        z = teacher.model(input_ids=torch.as_tensor(ids)[None]).logits[0].double() / 2.0
    lp = torch.log_softmax(z, -1)
    want, want_ids = lp.topk(5, -1)
    assert torch.equal(ex["topk_ids"].long(), want_ids)
    # fp32 log-softmax over V terms, stored in fp32: a few units of rounding of |log p| <= 20
    assert torch.allclose(ex["topk_log_probs"].double(), want, atol=50 * 1.2e-7 * 20)
    tail = torch.logsumexp(lp.scatter(-1, want_ids, -torch.inf), -1)
    assert torch.allclose(ex["log_tail"].double(), tail, atol=50 * 1.2e-7 * 20)
    nxt = lp[:-1].gather(-1, torch.as_tensor(ids[1:])[:, None])[:, 0]
    assert torch.allclose(ex["next_log_prob"][:-1].double(), nxt, atol=50 * 1.2e-7 * 20)
    # 6 K + 12 bytes per token at fp16 would be 42; this one is fp32 (8 K + 12 = 52) plus the headers
    assert 52 <= c.bytes_per_token() < 52 + 200


def test_distribution_from_the_cache_equals_the_online_teacher_at_k_equal_to_the_vocabulary(teacher, cache, tok):
    from xtok_core import align_batch
    from xtok_core.losses import pkl_loss, uld_loss
    from xtok_core.losses.positions import aligned_rows
    from xtok_core.projection import build_projection

    texts = TEXTS[5:8]
    al = align_batch(texts, tok("llama-3.2"), teacher.tok, add_special_tokens=True, max_length=20)
    td = cache.distribution(texts, al.teacher_ids, al.teacher_mask)
    with torch.no_grad():
        zt = teacher.model(input_ids=al.teacher_ids, attention_mask=al.teacher_mask.long()).logits
    g = torch.Generator().manual_seed(0)
    v_s = tok("llama-3.2").vocab_size
    zs = torch.randn(*al.student_mask.shape, v_s, generator=g)
    online, cached = aligned_rows(zs, zt, al), aligned_rows(zs, td, al)
    a = uld_loss(online.student, online.teacher)
    b = uld_loss(cached.student, cached.teacher)
    # the cache ran other batches (other padding): float32 noise in the teacher's probabilities only
    assert float(b) == pytest.approx(float(a), abs=1e-5)
    with pytest.raises(XtokError, match="other teacher tokens"):
        cache.distribution(texts[::-1], al.teacher_ids, al.teacher_mask)


def test_mismatched_cache_is_refused_with_one_line_each(cache, tok, tmp_path, data_file):
    def one_line(fn, *words):
        with pytest.raises(XtokError) as e:
            fn()
        msg = str(e.value)
        assert "\n" not in msg and all(w in msg for w in words), msg

    other = tmp_path / "other.txt"
    other.write_text("another text\n")
    one_line(lambda: cache.check(data_sha256=sha256_file(other)), "other data")
    one_line(lambda: cache.check(tokenizer=tok("qwen2.5")), "tokenizer", "gpt2", "qwen2.5")
    one_line(lambda: cache.check(temperature=2.0), "temperature 1", "2")
    one_line(lambda: cache.check(max_length=64), "24 tokens", "64")
    cache.check(tokenizer=tok("gpt2"), temperature=1.0, data_sha256=sha256_file(data_file), max_length=24,
                student_tokenizer=tok("gpt2"), **WHOLE)
    one_line(lambda: cache.check(student_tokenizer=tok("qwen2.5")), "windows", "gpt2", "qwen2.5")
    one_line(lambda: cache.check(seq_len=96), "seq_len 64", "96")
    one_line(lambda: cache.example("a text that was never cached"), "not in teacher cache")
    # a truncated shard
    copy = tmp_path / "copy"
    copy.mkdir()
    for f in cache.root.iterdir():
        if f.is_file():
            (copy / f.name).write_bytes(f.read_bytes())
    shard = copy / "shard-00001.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    one_line(lambda: TeacherCache.open(copy), "shard-00001.safetensors", "truncated")
    # an altered one (same size)
    (copy / "shard-00001.safetensors").write_bytes((cache.root / "shard-00001.safetensors").read_bytes())
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 1
    shard.write_bytes(bytes(raw))
    one_line(lambda: TeacherCache.open(copy).example(TEXTS[9]), "shard-00001.safetensors", "altered")
    one_line(lambda: TeacherCache.open(tmp_path), "not a teacher cache")


def _xtok(*args, env):
    return subprocess.run([sys.executable, "-m", "xtok_core", *args], cwd=ROOT, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_a_build_killed_with_sigkill_resumes_to_the_same_shards_as_an_uninterrupted_one(data_file, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    args = ["--teacher", "tiny:gpt2", "--data", str(data_file), "--top-k", "7", "--shard-size", "5",
            "--batch-size", "2", "--max-length", "20", "--seq-len", "64", "--heldout-fraction", "0", "--no-progress"]
    whole = _xtok("teacher-cache", *args, "--out", str(tmp_path / "whole"), env=env)
    assert whole.returncode == 0, whole.stderr
    # the same build, killed by SIGKILL right after its second shard is in place
    killed = tmp_path / "killed"
    script = (
        "import os, signal, sys; sys.argv = ['xtok'];"
        "from xtok_core import teacher_cache as tc;"
        f"tc.build_teacher_cache('tiny:gpt2', {str(data_file)!r}, {str(killed)!r}, top_k=7, shard_size=5, batch_size=2,"
        " max_length=20, seq_len=64, heldout_fraction=0.0, show_progress=False, after_shard=lambda i: os.kill(os.getpid(), signal.SIGKILL) if i == 1 else None)")
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == -9, run.stderr
    manifest = json.loads((killed / "manifest.json").read_text())
    assert not manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0, 1]
    with pytest.raises(XtokError, match="incomplete"):
        TeacherCache.open(killed)
    # what a kill in the middle of writing leaves: a temporary file and an unlisted partial shard
    (killed / ".shard-00002.safetensors.tmp-dead").write_bytes(b"half a shard")
    (killed / "shard-00003.safetensors").write_bytes(b"junk")
    resumed = _xtok("teacher-cache", *args, "--out", str(killed), env=env)
    assert resumed.returncode == 0, resumed.stderr
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (tmp_path / "whole", killed))
    assert a["shards"] == b["shards"] and b["complete"] and len(b["shards"]) == 5
    for s in a["shards"]:
        assert (killed / s["file"]).read_bytes() == (tmp_path / "whole" / s["file"]).read_bytes()
    assert not list(killed.glob(".shard-*"))
    # a rerun with other arguments is refused, in one line
    other = _xtok("teacher-cache", *args[:5], "8", *args[6:], "--out", str(killed), env=env)
    assert other.returncode == 2 and "other top_k" in other.stderr and other.stderr.count("\n") == 1


# ------------------------------------------------------------------------ runs from the cache
def _run_config(**kw):
    from xtok_core.distill import DistillConfig

    base = dict(student="tiny:gpt2", teachers=["tiny:bert-wordpiece"], loss="pkl", steps=3, batch_size=2, seq_len=24,
                tiny_dim=32, tiny_layers=2, train_demo_teacher=False, eval_every=0, text_chars=60, corpus_lines=200,
                checkpoint_every=10, seed=4)
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def run_cache(tmp_path_factory):
    """The run's own texts through its (random tiny) teacher, K = the teacher's whole vocabulary, fp32."""
    from xtok_core.distill.data import TextBatches

    cfg = _run_config()
    texts = [t for step in range(cfg.steps) for t in TextBatches(cfg.corpus_lines, cfg.text_chars, cfg.batch_size,
                                                                  cfg.seed)(step)]
    teacher = _teacher_of(cfg)
    return build_teacher_cache(teacher, texts, tmp_path_factory.mktemp("run") / "cache", top_k=teacher.vocab_size,
                               dtype="float32", max_length=cfg.seq_len, batch_size=4, show_progress=False)


@pytest.mark.slow
@pytest.mark.parametrize("loss,position", [("pkl", "boundary"), ("gold", "chain")])
def test_a_run_from_the_cache_equals_the_online_run_at_k_equal_to_the_vocabulary(run_cache, tmp_path, loss, position):
    from xtok_core.distill import run_distillation

    online = run_distillation(_run_config(loss=loss, position=position), tmp_path / "online", progress=False)
    cached = run_distillation(_run_config(loss=loss, position=position, teacher_caches=[str(run_cache.root)]),
                              tmp_path / "cached", progress=False)
    assert len(online.metrics) == len(cached.metrics) == 3
    for a, b in zip(online.metrics, cached.metrics):
        # the cache ran the teacher on other batches (other padding): its fp32 logits differ by rounding, ~1e-6
        # relative, and three AdamW steps (updates of size lr whatever the gradient's scale) keep that order
        for key in ("loss", "ce", "kd", "kd/t0", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key
        assert b["pairs/t0"] == a["pairs/t0"] > 0


@pytest.mark.slow
def test_a_run_from_the_cache_refuses_what_the_cache_cannot_give_with_one_line(run_cache, tmp_path):
    from xtok_core.distill import run_distillation

    cache = [str(run_cache.root)]
    for kw, words in (({"temperature": 2.0}, ("temperature 1", "2")),
                      ({"position": "chunk_mean"}, ("chunk_mean",)),
                      ({"seq_len": 48}, ("24 tokens", "48")),
                      ({"seed": 5}, ("not in teacher cache",))):  # other data: this seed's texts were never cached
        with pytest.raises(XtokError) as e:
            run_distillation(_run_config(teacher_caches=cache, **kw), tmp_path / f"r{len(kw)}{list(kw)[0]}", progress=False)
        assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)
    with pytest.raises(XtokError, match="on-policy") as e:
        _run_config(teacher_caches=cache, on_policy_ratio=0.5)
    assert "\n" not in str(e.value)


@pytest.mark.slow
def test_two_caches_with_their_alphas_equal_two_online_teachers(run_cache, tmp_path):
    from xtok_core.distill import run_distillation

    two = dict(teachers=["tiny:bert-wordpiece"] * 2, alphas=[0.3, 0.7], steps=2)
    online = run_distillation(_run_config(**two), tmp_path / "online", progress=False)
    cached = run_distillation(_run_config(**two, teacher_caches=[str(run_cache.root)] * 2), tmp_path / "cached",
                              progress=False)
    for a, b in zip(online.metrics, cached.metrics):
        assert b["kd"] == pytest.approx(0.3 * b["kd/t0"] + 0.7 * b["kd/t1"], rel=1e-6)
        for key in ("loss", "kd", "kd/t0", "kd/t1", "grad_norm"):  # see the single-cache test for the tolerance
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), key


@pytest.mark.slow
def test_a_run_with_data_trains_from_a_cache_of_that_data_and_refuses_another(data_file, tmp_path):
    from xtok_core.distill import run_distillation

    cfg = dict(data=str(data_file), heldout_fraction=0.1, seq_len=24, steps=2)
    cache = build_teacher_cache(_teacher_of(_run_config()), data_file,
                                tmp_path / "cache", top_k=64, student="tiny:gpt2", seq_len=24, heldout_fraction=0.1,
                                batch_size=4, show_progress=False)
    online = run_distillation(_run_config(**cfg), tmp_path / "online", progress=False)
    cached = run_distillation(_run_config(**cfg, teacher_caches=[str(cache.root)]), tmp_path / "cached", progress=False)
    assert [m["pairs/t0"] for m in cached.metrics] == [m["pairs/t0"] for m in online.metrics]
    other = tmp_path / "other.txt"
    other.write_text(data_file.read_text() + "\n\none more document.\n")
    for kw, words in (({"data": str(other)}, ("other data",)), ({"student": "tiny:qwen2.5"}, ("windows", "qwen2.5"))):
        with pytest.raises(XtokError) as e:
            run_distillation(_run_config(**{**cfg, **kw}, teacher_caches=[str(cache.root)]), tmp_path / "x", progress=False)
        assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def _teacher_of(cfg):
    from xtok_core.models import load_model

    return load_model(cfg.teachers[0], tiny_dim=cfg.tiny_dim, tiny_layers=cfg.tiny_layers, seed=cfg.seed)


def test_a_cache_of_the_generated_corpus_serves_default_runs_and_says_how_far_it_got(tmp_path):
    from xtok_core.distill import run_distillation
    from xtok_core.distill.data import TextBatches
    from xtok_core.teacher_cache import PROGRESS, generated_examples

    cfg = _run_config(corpus_lines=60)
    seen = []
    cache = build_teacher_cache(_teacher_of(cfg), None, tmp_path / "cache", top_k=16, corpus_lines=60,
                                text_chars=cfg.text_chars, seed=cfg.seed, batch_size=4, show_progress=False,
                                progress=lambda f, msg: seen.append(f))
    # every example a run on this corpus can draw, whatever its steps and batch size
    examples = generated_examples(60, cfg.text_chars, cfg.seed)
    assert cache.manifest["n_examples"] == len(examples) > cfg.steps * cfg.batch_size
    assert set(TextBatches(60, cfg.text_chars, cfg.batch_size, cfg.seed)(0)) <= set(examples)
    progress = json.loads((cache.root / PROGRESS).read_text())
    assert progress["state"] == "complete" and progress["done"] == progress["total"] == len(examples)
    assert seen == sorted(seen) and seen[-1] == 1.0
    result = run_distillation(_run_config(corpus_lines=60, teacher_caches=[str(cache.root)]), tmp_path / "run",
                              progress=False)
    assert len(result.metrics) == cfg.steps and all(m["pairs/t0"] > 0 for m in result.metrics)
    for kw, words in (({"corpus_lines": 61}, ("corpus_lines 60", "61", "--corpus-lines")),
                      ({"seed": cfg.seed + 1}, (f"seed {cfg.seed}", f"uses {cfg.seed + 1}")),
                      ({"text_chars": 80}, ("text_chars",))):
        with pytest.raises(XtokError) as e:
            run_distillation(_run_config(**{"corpus_lines": 60, **kw}, teacher_caches=[str(cache.root)]),
                             tmp_path / f"x{list(kw)[0]}", progress=False)
        assert "\n" not in str(e.value) and all(w in str(e.value) for w in words), str(e.value)


def test_a_cache_of_a_data_file_is_refused_for_a_run_on_the_generated_corpus(cache, tmp_path):
    from xtok_core.distill import run_distillation

    with pytest.raises(XtokError) as e:
        run_distillation(_run_config(teacher_caches=[str(cache.root)]), tmp_path / "run", progress=False)
    assert "\n" not in str(e.value) and "--data" in str(e.value) and "generated corpus" in str(e.value), str(e.value)


def test_a_failed_build_says_why_in_its_progress_file(teacher, tmp_path):
    from xtok_core.teacher_cache import PROGRESS

    def boom(si):
        raise RuntimeError("disk full while writing\nsecond line")

    with pytest.raises(RuntimeError):
        build_teacher_cache(teacher, TEXTS, tmp_path / "c", top_k=4, shard_size=8, batch_size=4, show_progress=False,
                            after_shard=boom)
    progress = json.loads((tmp_path / "c" / PROGRESS).read_text())
    assert progress["state"] == "failed" and progress["error"] == "disk full while writing"
    assert progress["done"] == 8 and progress["total"] == len(TEXTS)
