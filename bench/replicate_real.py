"""Mini-replication with real pretrained teachers: does P-KL beat GOLD when the teacher splits every digit?

The X-Token paper's question (a Qwen teacher splits numerals into digits, a Llama-3 student groups them by
three, so exact-match losses such as GOLD see no numeral), asked of real teacher distributions:

  regime "pkl"   teacher SmolLM2-135M-Instruct (one digit per token), student a fresh tiny:llama-3.2
                 (digits grouped by three: none of its multi-digit numerals is an exact match)
  regime "hkl"   the same teacher, a fresh tiny:qwen2.5 student (Qwen also splits every digit: numerals match)
  regime "real"  teacher Gemma-3-270M (base), student SmolLM2-135M-Instruct itself, continued training
  regime "pkl-gemma"  (the GPU setting only) Gemma-3-270M as a second P-KL-regime teacher of tiny:llama-3.2

Methods, per regime: CE only, ULD, GOLD as NeMo-RL computes it (`gold`), TRL's hybrid GOLD (`gold-trl`),
H-KL and P-KL; in the P-KL regime also on-policy P-KL (`pkl-onpolicy`, half of every batch sampled by the
student). Same data order, steps, learning rate and initialisation per seed (`xtok distill`'s optimiser and
schedule: AdamW, warm-up then cosine), dynamic KD/CE scaling λ = sg(CE)/sg(KD), boundary positions, τ = 1.

Teacher cache. Each teacher runs once, before any student trains, over every text the students will see
(all seeds' batches) and over the held-out text: `xtok_core.teacher_cache.build_teacher_cache` stores its
top-K next-token log-probabilities (fp16) and the log of the remaining mass per *teacher* token, and every
student step reads them as a `TeacherDistribution` aligned at train time (how each loss reads the tail:
see the losses' docstrings). A rerun with the same sizes reopens the caches. On-policy steps train on the
student's fresh samples, which no cache holds: there the teacher runs online, cut to the same top-K.

Metrics, on held-out text no run trains on (a corpus seed of its own) and held-out additions:
  ce_bpb        student CE in bits per UTF-8 byte of the predicted tokens (comparable across tokenizers)
  ce_token      nats per student token
  numeral_ce    nats per student token on targets that contain a digit
  top1_agree    share of aligned groups where the student's and the teacher's most likely next tokens agree
                (the shorter one's bytes are a prefix of the longer one's: the same next text as far as both go)
  answer_nll    nats of the correct answer of a held-out addition, teacher-forced
  accuracy      greedy exact match on held-out additions
and, for off-policy vs on-policy P-KL, SeDi's exposure-bias measure: the teacher's NLL (nats per byte) of
the student's own samples, continuing held-out prompts, as the sample length grows.

Mean ± sample standard deviation over seeds; a difference between two methods no larger than the larger of
their seed spreads is reported as a tie.

    python bench/replicate_real.py --quick        # 2-core CPU: sized for ~20 min on a quiet machine (estimated, not yet measured)
    python bench/replicate_real.py                # the larger setting, for a GPU (--device cuda)
    python bench/replicate_real.py --from-json bench/results/replicate-real.json   # tables and charts again
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _measure import machine, table  # noqa: E402
from replicate import _numeral_ids, answer_nlls, heldout_texts, resolve_device, summarize  # noqa: E402

from xtok_core.align import align_batch  # noqa: E402
from xtok_core.corpus import arithmetic_eval_set  # noqa: E402
from xtok_core.distill import DistillConfig, arithmetic_accuracy  # noqa: E402
from xtok_core.distill.data import TextBatches, decode_samples, encode_padded, sample_continuations, split_prompt  # noqa: E402
from xtok_core.distill.loop import _lr_at  # noqa: E402
from xtok_core.distill.objective import CrossEntropyOnly  # noqa: E402
from xtok_core.integrations.collator import CrossTokenizerCollator  # noqa: E402
from xtok_core.errors import XtokError  # noqa: E402
from xtok_core.losses import DistillLoss, TeacherTerm, TeacherDistribution  # noqa: E402
from xtok_core.models import LoadedModel, build_tiny, load_model, pad_id  # noqa: E402
from xtok_core.projection import build_projection  # noqa: E402
from xtok_core.teacher_cache import TeacherCache, _teacher_pass, build_teacher_cache, texts_sha256  # noqa: E402
from xtok_core.tok import Tok  # noqa: E402

SMOLLM2, GEMMA3 = "smollm2-135m-instruct", "gemma3-270m"


@dataclass(frozen=True)
class Regime:
    student: str
    teacher: str
    about: str


REGIMES = {
    "pkl": Regime("tiny:llama-3.2", SMOLLM2, "SmolLM2 splits every digit; no multi-digit Llama-3 numeral matches exactly"),
    "hkl": Regime("tiny:qwen2.5", SMOLLM2, "Qwen2.5 splits every digit too: numerals match exactly"),
    "real": Regime(SMOLLM2, GEMMA3, "pretrained student, continued training; both split every digit"),
    "pkl-gemma": Regime("tiny:llama-3.2", GEMMA3, "a second P-KL-regime teacher (Gemma-3 splits every digit)"),
}
METHODS = ("ce", "uld", "gold", "gold-trl", "hkl", "pkl", "pkl-onpolicy")
LABELS = {"ce": "CE only", "uld": "ULD", "gold": "GOLD (NeMo-RL)", "gold-trl": "GOLD (TRL hybrid)", "hkl": "H-KL",
          "pkl": "P-KL", "pkl-onpolicy": "P-KL on-policy"}
METRICS = ("ce_bpb", "ce_token", "numeral_ce", "top1_agree", "answer_nll", "accuracy")
HEADERS = {"ce_bpb": "CE bits/byte", "ce_token": "CE/token", "numeral_ce": "numeral CE/token",
           "top1_agree": "top-1 agree %", "answer_nll": "answer NLL", "accuracy": "exact match %"}
PERCENT = {"top1_agree", "accuracy"}
HIGHER_IS_BETTER = {"top1_agree", "accuracy"}
EVAL_SEED = 1234
EXPOSURE_SEED = 7_777   # sampling seed of the exposure-bias samples (the same for every student)
CACHE_MAX_LENGTH = 512  # teacher tokens kept per cached text: more than any training or held-out text has


@dataclass
class Setting:
    steps: int                  # tiny students: distillation steps
    batch_size: int
    seq_len: int
    lr: float
    dim: int                    # tiny students: hidden size x layers (vocabulary: their tokenizer's)
    layers: int
    real_steps: int             # the pretrained student (regime "real"): continued-training steps
    real_batch: int
    real_seq_len: int
    real_lr: float
    top_k: int                  # teacher cache: top-K log-probs kept per teacher position
    eval_size: int              # held-out additions
    heldout_texts: int          # held-out texts (about 200 characters each)
    prompts: int                # exposure bias: held-out prompts sampled per student
    sample_lengths: tuple       # exposure bias: sample lengths in student tokens
    seeds: int
    regimes: tuple = ("pkl", "hkl", "real")
    on_policy_ratio: float = 0.5
    corpus_lines: int = 4_000
    text_chars: int = 200


SETTINGS = {
    # 2-core CPU: tiny students are cheap next to their 128k-152k vocabularies; the 135M student dominates
    "quick": Setting(steps=20, batch_size=4, seq_len=48, lr=3e-3, dim=64, layers=2, real_steps=5, real_batch=2,
                     real_seq_len=48, real_lr=5e-5, top_k=64, eval_size=24, heldout_texts=12, prompts=16,
                     sample_lengths=(2, 4, 8, 16), seeds=3),
    # one GPU: the package's default student size, longer training, Gemma as a second P-KL teacher
    "full": Setting(steps=1000, batch_size=16, seq_len=128, lr=1e-3, dim=192, layers=6, real_steps=300, real_batch=8,
                    real_seq_len=256, real_lr=2e-5, top_k=256, eval_size=256, heldout_texts=256, prompts=128,
                    sample_lengths=(4, 8, 16, 32, 64), seeds=3, regimes=("pkl", "hkl", "real", "pkl-gemma"),
                    corpus_lines=20_000),
}


# ------------------------------------------------------------------------ the teachers
@dataclass
class TeacherSide:
    """A teacher of the benchmark: its teacher cache (`xtok_core.teacher_cache`, built once) and the model,
    for what a cache cannot give: on-policy steps (the text is the student's new sample), the exposure-bias
    scores and the teacher's own evaluation."""

    lm: LoadedModel
    cache: TeacherCache
    seconds: float = 0.0

    @property
    def tok(self) -> Tok:
        return self.lm.tok

    def distribution(self, texts: list[str], al, device, *, online: bool = False) -> TeacherDistribution:
        """The teacher's top-K + tail over an aligned batch: read from the cache, or (`online`) computed now
        with the cache's K and temperature, so on- and off-policy steps see the same kind of teacher."""
        if not online:
            return self.cache.distribution(texts, al.teacher_ids, al.teacher_mask)
        rows = [r[m].tolist() for r, m in zip(al.teacher_ids.cpu(), al.teacher_mask.cpu())]
        parts = _teacher_pass(self.lm.model, rows, pad_id(self.tok), self.cache.top_k, self.cache.temperature,
                              device, nullcontext())
        B, T = al.teacher_ids.shape
        pad = lambda x, fill: F.pad(x, (0, 0) * (x.dim() - 1) + (0, T - len(x)), value=fill)  # noqa: E731
        ids = torch.stack([pad(p[0].long(), 0) for p in parts])
        ids[~al.teacher_mask.cpu()] = torch.arange(self.cache.top_k)  # padding: any distinct ids, masked anyway
        return TeacherDistribution.from_topk(
            ids.to(device), torch.stack([pad(p[1], 0.0) for p in parts]).to(device),
            torch.stack([pad(p[2], -math.inf) for p in parts]).to(device), self.cache.vocab_size,
            self.cache.temperature, next_log_prob=torch.stack([pad(p[3], 0.0) for p in parts]).to(device))

    def top1(self, text: str) -> torch.Tensor:
        """The teacher's most likely next token at each of its positions of a cached text."""
        return self.cache.example(text)["topk_ids"][:, 0].long()


def prepare_teacher(spec: str, texts: list[str], setting: Setting, cache_dir: Path, device, log) -> TeacherSide:
    """Load the teacher and build (or reopen) its cache over `texts`; the folder is named by the texts' hash,
    so a rerun with the same sizes reuses it and other sizes get their own."""
    lm = load_model(spec)
    t0 = time.time()
    out = cache_dir / f"{spec}-k{setting.top_k}-{texts_sha256(texts)[:12]}"
    cache = build_teacher_cache(lm, texts, out, top_k=setting.top_k, max_length=CACHE_MAX_LENGTH, device=device,
                                show_progress=False,
                                progress=lambda f, msg: log(f"  cache {spec}: {msg}") if int(100 * f) % 25 == 0 else None)
    log(f"teacher cache {spec}: {len(cache)} texts, {cache.bytes_per_token():.0f} bytes per teacher token, "
        f"{time.time() - t0:.0f}s -> {out}")
    return TeacherSide(lm, cache, time.time() - t0)


# ------------------------------------------------------------------------ training
_W: dict = {}


def projection(student: LoadedModel, teacher: LoadedModel):
    key = (student.tok.sha256, teacher.tok.sha256, student.vocab_size, teacher.vocab_size)
    if key not in _W:
        _W[key] = build_projection(student.tok, teacher.tok, student_vocab_size=student.vocab_size,
                                   teacher_vocab_size=teacher.vocab_size)
    return _W[key]


def run_config(setting: Setting, regime: str, method: str, seed: int) -> DistillConfig:
    """The run as `xtok distill` would be configured (its optimiser, schedule and data are used as they are)."""
    real = not REGIMES[regime].student.startswith("tiny:")
    steps = setting.real_steps if real else setting.steps
    return DistillConfig(
        student=REGIMES[regime].student, teachers=[REGIMES[regime].teacher], kd_weight=None,
        loss="ce" if method == "ce" else method.replace("-onpolicy", ""), steps=steps,
        batch_size=setting.real_batch if real else setting.batch_size,
        seq_len=setting.real_seq_len if real else setting.seq_len, lr=setting.real_lr if real else setting.lr,
        warmup=max(1, steps // 10), seed=seed, corpus_lines=setting.corpus_lines, text_chars=setting.text_chars,
        on_policy_ratio=setting.on_policy_ratio if method == "pkl-onpolicy" else 0.0,
        max_new_tokens=max(setting.sample_lengths), tiny_dim=setting.dim, tiny_layers=setting.layers, eval_every=0)


def training_texts(cfg: DistillConfig) -> list[str]:
    """Every text a run of `cfg` trains on (its batches are a pure function of the step)."""
    batches = TextBatches(cfg.corpus_lines, cfg.text_chars, cfg.batch_size, cfg.seed)
    return [t for s in range(cfg.steps) for t in batches(s)]


def fresh_student(cfg: DistillConfig, pretrained: dict) -> LoadedModel:
    """A tiny student initialised from the seed, or the pretrained student with its original weights."""
    if cfg.student.startswith("tiny:"):
        return build_tiny(cfg.student, dim=cfg.tiny_dim, layers=cfg.tiny_layers, seed=cfg.seed)
    lm, state = pretrained[cfg.student]
    lm.model.load_state_dict(state)
    return lm


def train(cfg: DistillConfig, student: LoadedModel, teacher: TeacherSide, device) -> dict:
    """One student run: the distillation step of `xtok distill`, the teacher's distributions from its cache
    (on-policy steps: from the teacher, online)."""
    torch.manual_seed(cfg.seed)
    model = student.model.to(device).train()
    objective = CrossEntropyOnly() if cfg.loss == "ce" else DistillLoss(
        [TeacherTerm(W=projection(student, teacher.lm), alpha=1.0, loss=cfg.loss, name="t0")],
        temperature=cfg.temperature, kd_weight=cfg.kd_weight, position=cfg.position)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                                  weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
    batches = TextBatches(cfg.corpus_lines, cfg.text_chars, cfg.batch_size, cfg.seed)
    n_on = round(cfg.on_policy_ratio * cfg.batch_size)
    collator = CrossTokenizerCollator(student, [teacher.lm], max_length=cfg.seq_len)
    history = []
    t0 = time.time()
    for step in range(cfg.steps):
        for g in optimizer.param_groups:
            g["lr"] = _lr_at(step, cfg)
        texts = batches(step)
        if n_on:
            prompts = [split_prompt(t) for t in texts[:n_on]]
            cont = sample_continuations(model, student.tok, prompts, max_new_tokens=cfg.max_new_tokens,
                                        temperature=cfg.sample_temperature, max_length=cfg.seq_len, device=device)
            texts[:n_on] = decode_samples(student.tok, prompts, cont)
            model.train()
        # `xtok distill`'s batch: every tokenizer encodes the text, CE only on corpus rows (not on samples)
        batch = collator.encode(texts, ce_rows=torch.arange(len(texts)) >= n_on)
        al = CrossTokenizerCollator.alignments(batch)[0].to(device)
        labels = batch["labels"].to(device)
        s_logits = model(input_ids=al.student_ids, attention_mask=al.student_mask.long()).logits.float()
        if cfg.loss == "ce":
            loss, stats = objective(s_logits, labels=labels)
        else:
            t_dist = teacher.distribution(texts, al, device, online=n_on > 0)
            loss, stats = objective(s_logits, [t_dist], [al], input_ids=al.student_ids, attention_mask=al.student_mask,
                                    labels=labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        history.append({k: float(v) for k, v in stats.items()})
    return {"train_seconds": round(time.time() - t0, 1), "ce_last": history[-1]["ce"],
            "kd_last": history[-1].get("kd"), "lambda_last": history[-1].get("lambda"),
            "kd_off_steps": sum(1 for h in history if cfg.loss != "ce" and not h.get("lambda"))}


# ------------------------------------------------------------------------ evaluation
def _prefix_agree(tok_a: Tok, ids_a: np.ndarray, tok_b: Tok, ids_b: np.ndarray) -> np.ndarray:
    """Per pair: the shorter token's bytes are a prefix of the longer one's (decided once per distinct pair)."""
    if not len(ids_a):
        return np.zeros(0, bool)
    pairs, inverse = np.unique(np.stack([ids_a, ids_b], 1), axis=0, return_inverse=True)
    ok = np.zeros(len(pairs), bool)
    for k, (a, b) in enumerate(pairs.tolist()):
        x = tok_a.token_bytes[a] if a < len(tok_a.token_bytes) else None
        y = tok_b.token_bytes[b] if b < len(tok_b.token_bytes) else None
        if x and y:
            n = min(len(x), len(y))
            ok[k] = x[:n] == y[:n]
    return ok[inverse.reshape(-1)]


@torch.no_grad()
def heldout_metrics(lm: LoadedModel, texts: list[str], teacher: TeacherSide | None, *, device, batch_size: int = 8) -> dict:
    """CE per byte / token / numeral token of `lm` on held-out texts, and its top-1 agreement with the cached
    teacher on aligned groups (None without a teacher, or when it has `lm`'s tokenizer)."""
    model, tok = lm.model.to(device).eval(), lm.tok
    nll_sum = n_tok = num_sum = n_num = n_bytes = agree = n_groups = 0.0
    for i in range(0, len(texts), batch_size):
        chunk = texts[i:i + batch_size]
        ids, mask = encode_padded(tok, chunk, 1 << 16)
        logits = model(input_ids=ids.to(device), attention_mask=mask.long().to(device)).logits.float().cpu()
        target, valid = ids[:, 1:], mask[:, 1:] & mask[:, :-1]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), reduction="none").view(target.shape)
        digit = torch.from_numpy(_numeral_ids(tok, target.numpy())) & valid
        nll_sum += float(nll[valid].sum())
        n_tok += float(valid.sum())
        num_sum += float(nll[digit].sum())
        n_num += float(digit.sum())
        # bytes predicted: the text from the first target token on (without a bos the first token is given)
        for enc, text in zip(tok.encode_batch(chunk, add_special_tokens=True), chunk):
            first = int(enc.offsets[1][0]) if len(enc.ids) > 1 else len(text.encode())
            n_bytes += len(text.encode()) - first
        if teacher is not None and teacher.tok.sha256 != tok.sha256:
            al = align_batch(chunk, tok, teacher.tok, add_special_tokens=True)
            if not torch.equal(al.student_ids[al.student_mask], ids[mask]):
                raise XtokError("held-out alignment re-tokenized the student's text differently; report this as a bug")
            g = al.group_mask & (al.s_start > 0) & (al.t_start > 0)  # a group some position predicts on both sides
            b, _ = torch.nonzero(g, as_tuple=True)
            s_pred = logits.argmax(-1)[b, al.s_start[g] - 1].numpy()
            T = al.teacher_ids.shape[1]
            t_top1 = torch.stack([F.pad(teacher.top1(t), (0, T))[:T] for t in chunk])
            t_pred = t_top1[b, al.t_start[g] - 1].numpy()
            agree += float(_prefix_agree(tok, s_pred, teacher.tok, t_pred).sum())
            n_groups += len(s_pred)
    return {"ce_token": nll_sum / max(n_tok, 1), "numeral_ce": num_sum / max(n_num, 1),
            "ce_bpb": nll_sum / max(n_bytes, 1) / math.log(2), "heldout_tokens": int(n_tok),
            "top1_agree": agree / n_groups if n_groups else None}


def evaluate(lm: LoadedModel, setting: Setting, heldout: list[str], teacher: TeacherSide | None, device) -> dict:
    pairs = arithmetic_eval_set(setting.eval_size, EVAL_SEED)
    acc = arithmetic_accuracy(lm.model.to(device), lm.tok, n=setting.eval_size, seed=EVAL_SEED, device=device)
    return {**heldout_metrics(lm, heldout, teacher, device=device), "accuracy": acc["accuracy"],
            "answer_nll": float(answer_nlls(lm.model, lm.tok, pairs, device=device).mean()), "examples": acc["examples"]}


@torch.no_grad()
def exposure_bias(student: LoadedModel, teacher: LoadedModel, prompts: list[str], lengths, device) -> dict:
    """SeDi's exposure-bias measure: the teacher's NLL, in nats per byte, of the student's own samples (temperature 1,
    a fixed sampling seed) continuing `prompts`, for each sample length in student tokens."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(EXPOSURE_SEED)
        cont = sample_continuations(student.model.to(device), student.tok, prompts, max_new_tokens=max(lengths),
                                    temperature=1.0, max_length=64, device=device)
    out = {}
    for L in lengths:
        texts = decode_samples(student.tok, prompts, [c[:L] for c in cont])
        pairs = [(p, t[len(p):]) for p, t in zip(prompts, texts) if len(t[len(p):].encode())]
        nll = answer_nlls(teacher.model.to(device), teacher.tok, pairs, device=device, max_length=256)
        n_bytes = np.array([len(a.encode()) for _, a in pairs], dtype=float)
        out[str(L)] = float(nll.sum() / n_bytes.sum()) if len(pairs) else None
    return out


# ------------------------------------------------------------------------ summary
def compare(summary: dict, regimes: list[str], methods: list[str]) -> list[dict]:
    """A − B for A in (P-KL, H-KL), B in (GOLD NeMo-RL, GOLD TRL) per regime and metric; a tie when the
    difference is no larger than the larger of the two seed spreads."""
    out = []
    for regime in regimes:
        for a in ("pkl", "hkl"):
            for b in ("gold", "gold-trl"):
                ca, cb = summary.get(regime, {}).get(a), summary.get(regime, {}).get(b)
                if not ca or not cb:
                    continue
                for m in METRICS:
                    if m not in ca or m not in cb:
                        continue
                    d = ca[m]["mean"] - cb[m]["mean"]
                    spread = max(ca[m]["spread"], cb[m]["spread"])
                    better_a = d > 0 if m in HIGHER_IS_BETTER else d < 0
                    if min(ca[m]["n"], cb[m]["n"]) < 2:
                        verdict = "1 seed"  # no spread to compare against
                    else:
                        verdict = "tie" if abs(d) <= spread else (LABELS[a] if better_a else LABELS[b])
                    out.append({"regime": regime, "a": a, "b": b, "metric": m, "diff": d, "spread": spread,
                                "verdict": verdict})
    return out


def _cell(c: dict | None, metric: str) -> str:
    if not c:
        return "-"
    s = 100.0 if metric in PERCENT else 1.0
    return f"{s * c['mean']:.{1 if metric in PERCENT else 3}f} ± {s * c['spread']:.{1 if metric in PERCENT else 3}f}"


def result_table(record: dict) -> str:
    rows = []
    for regime in record["regimes"]:
        rg = REGIMES[regime]
        te = record["teacher_eval"].get(regime)
        if te:
            rows.append([regime, f"{rg.teacher} (teacher)", "-", "-", *(_cell({"mean": te[m], "spread": 0.0}, m)
                                                                     if te.get(m) is not None else "-" for m in METRICS)])
        for method in record["methods"]:
            cell = record["summary"].get(regime, {}).get(method)
            if cell:
                n = max(v["n"] for v in cell.values())
                rows.append([regime, f"{rg.student} ← {rg.teacher}", LABELS[method], n,
                             *(_cell(cell.get(m), m) for m in METRICS)])
    return table(["regime", "student ← teacher", "method", "seeds", *(HEADERS[m] for m in METRICS)], rows)


def comparison_table(comps: list[dict]) -> str:
    """One row per regime and pair of methods, one column per metric: mean difference (winner, or tie)."""
    rows, order = {}, []
    for c in comps:
        key = (c["regime"], c["a"], c["b"])
        if key not in rows:
            rows[key] = {}
            order.append(key)
        scale = 100 if c["metric"] in PERCENT else 1
        short = {LABELS[c["a"]]: "A", LABELS[c["b"]]: "B"}.get(c["verdict"], c["verdict"])
        rows[key][c["metric"]] = f"{c['diff'] * scale:+.3f} ({short})"
    body = [[r, f"A = {LABELS[a]}, B = {LABELS[b]}", *(rows[(r, a, b)].get(m, "-") for m in METRICS)] for r, a, b in order]
    return table(["regime", "A − B", *(HEADERS[m] for m in METRICS)], body)


def exposure_table(record: dict) -> str:
    rows = []
    for method in ("pkl", "pkl-onpolicy"):
        rs = [r for r in record["runs"] if r["method"] == method and r.get("exposure")]
        if not rs:
            continue
        cells = []
        for L in record["sizes"]["sample_lengths"]:
            v = np.array([r["exposure"][str(L)] for r in rs if r["exposure"].get(str(L)) is not None])
            cells.append(f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}" if len(v) else "-")
        rows.append([LABELS[method], len(rs), *cells])
    return table(["student (P-KL regime)", "seeds", *(f"{L} tokens" for L in record["sizes"]["sample_lengths"])], rows)


def write_charts(record: dict, out: Path, stem: str) -> dict:
    """Bar charts (one panel per metric, bars per regime and method) and the exposure-bias curves as PNG.
    Returns what was drawn: {"bars": {metric: {regime: [heights]}}, "exposure": {method: [means]}, "files": [...]}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary, regimes, methods = record["summary"], record["regimes"], record["methods"]
    drawn = {"bars": {}, "exposure": {}, "files": []}
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4.2 * len(METRICS), 4.4))
    width = 0.8 / max(1, len(methods))
    cmap = plt.get_cmap("tab10")
    for ax, metric in zip(axes, METRICS):
        scale = 100.0 if metric in PERCENT else 1.0
        drawn["bars"][metric] = {}
        for k, method in enumerate(methods):
            cells = [summary[r].get(method, {}).get(metric) for r in regimes]
            h = [c["mean"] * scale if c else np.nan for c in cells]
            ax.bar(np.arange(len(regimes)) + (k - (len(methods) - 1) / 2) * width, h, width, color=cmap(k),
                   yerr=[c["spread"] * scale if c else 0 for c in cells], capsize=2, label=LABELS[method])
            for r, v in zip(regimes, h):
                drawn["bars"][metric].setdefault(r, []).append(v)
        vals = [v for r in regimes for v in drawn["bars"][metric][r] if not np.isnan(v)]
        if vals and metric not in PERCENT:
            lo, hi = min(vals), max(vals)
            ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.15 * (hi - lo + 1e-9))
        ax.set_xticks(np.arange(len(regimes)), [f"{r}\n{REGIMES[r].student.replace('tiny:', 'tiny ')}" for r in regimes],
                      fontsize=7)
        ax.set_title(HEADERS[metric] + (" (higher is better)" if metric in HIGHER_IS_BETTER else " (lower is better)"),
                     fontsize=9)
    axes[0].legend(fontsize=7)
    fig.suptitle(record["title"], fontsize=10)
    fig.tight_layout()
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=80)
    plt.close(fig)
    drawn["files"].append(str(path))

    lengths = record["sizes"]["sample_lengths"]
    curves = {m: [r for r in record["runs"] if r["method"] == m and r.get("exposure")] for m in ("pkl", "pkl-onpolicy")}
    if any(curves.values()):
        fig, ax = plt.subplots(figsize=(6, 4))
        for m, rs in curves.items():
            if not rs:
                continue
            v = np.array([[r["exposure"][str(L)] if r["exposure"].get(str(L)) is not None else np.nan for L in lengths]
                          for r in rs])
            mean = np.nanmean(v, 0)
            sd = np.nanstd(v, 0, ddof=1) if len(rs) > 1 else np.zeros(len(lengths))
            ax.errorbar(lengths, mean, yerr=sd, marker="o", capsize=3, label=LABELS[m])
            drawn["exposure"][m] = mean.tolist()
        ax.set_xscale("log", base=2)
        ax.set_xlabel("student sample length (tokens)")
        ax.set_ylabel("teacher NLL of the student's samples (nats/byte)")
        ax.set_title("exposure bias, P-KL regime (lower is better)", fontsize=9)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out / f"{stem}-exposure.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        drawn["files"].append(str(path))
    return drawn


def report(record: dict, out: Path, stem: str) -> dict:
    """Summary, comparisons, tables and charts of a record (finished, or partial: the seeds so far)."""
    regimes, methods = record["regimes"], record["methods"]
    record["summary"] = summarize(record["runs"], regimes, methods, metrics=METRICS, shared_ce=False)
    record["comparisons"] = compare(record["summary"], regimes, methods)
    seeds = sorted({r["seed"] for r in record["runs"]})
    s = record["sizes"]
    record["title"] = (f"xtok mini-replication, real teachers ({record['setting']}: tiny students {s['dim']}x{s['layers']}, "
                       f"{s['steps']} steps; SmolLM2 student {s['real_steps']} steps; {len(seeds)} seeds; {record['device']})")
    record["table"] = result_table(record)
    record["comparison_table"] = comparison_table(record["comparisons"])
    record["exposure_table"] = exposure_table(record)
    record["charts"] = write_charts(record, out, stem)
    (out / f"{stem}.json").write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    text = (f"{record['title']}\n\nmachine: {record['machine']}\n\ncommand: `{record['command']}`\n\nwall time: "
            f"{record.get('elapsed_s', 0):.0f} s ({'finished' if record['finished'] else 'partial'})\n\n{record['table']}\n\n"
            f"{record['comparison_table']}\n\nexposure bias (teacher NLL, nats/byte, of the student's samples):\n\n"
            f"{record['exposure_table']}\n")
    (out / f"{stem}.md").write_text(text, encoding="utf-8")
    print("\n" + text)
    return record


# ------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 2-core CPU setting")
    ap.add_argument("--seeds", type=int, help="seeds per method (0, 1, ...); default 3")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--regimes", help=f"comma list of {', '.join(REGIMES)} (default: the setting's)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"), help="folder of the outputs")
    ap.add_argument("--name", default="replicate-real", help="file stem of the outputs")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--cache-dir", default="runs/replicate-real/caches", help="teacher caches (one per teacher and sizes)")
    ap.add_argument("--from-json", metavar="JSON", help="only print the tables and redraw the charts of a written JSON")
    for name in ("steps", "batch-size", "seq-len", "dim", "layers", "real-steps", "real-batch", "real-seq-len", "top-k",
                 "eval-size", "heldout-texts", "prompts", "corpus-lines"):
        ap.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)  # smaller sizes: the test suite's
    ap.add_argument("--sample-lengths", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def build_setting(args) -> tuple[str, Setting]:
    name = "quick" if args.quick else "full"
    keys = ("seeds", "steps", "batch_size", "seq_len", "dim", "layers", "real_steps", "real_batch", "real_seq_len",
            "top_k", "eval_size", "heldout_texts", "prompts", "corpus_lines")
    over = {k: getattr(args, k) for k in keys if getattr(args, k) is not None}
    if args.sample_lengths:
        over["sample_lengths"] = tuple(int(x) for x in args.sample_lengths.split(","))
    if args.regimes:
        over["regimes"] = tuple(r.strip() for r in args.regimes.split(",") if r.strip())
    return name, replace(SETTINGS[name], **over)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        p = Path(args.from_json)
        return report(json.loads(p.read_text(encoding="utf-8")), p.parent, p.stem)
    name, setting = build_setting(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS] + [r for r in setting.regimes if r not in REGIMES]
    if bad:
        raise SystemExit(f"unknown method or regime {bad}; methods: {', '.join(METHODS)}; regimes: {', '.join(REGIMES)}")
    device = resolve_device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    regimes = list(setting.regimes)
    plan = {r: [m for m in methods if m != "pkl-onpolicy" or r == "pkl"] for r in regimes}
    seeds = list(range(setting.seeds))
    heldout = heldout_texts(setting.heldout_texts)
    prompts = [split_prompt(t) for t in heldout_texts(setting.prompts, chars=120)]
    record = {"setting": name, "sizes": asdict(setting), "methods": methods, "regimes": regimes, "device": device,
              "machine": machine(), "command": "python bench/replicate_real.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "regime_models": {r: asdict(REGIMES[r]) for r in regimes}, "teacher_cache": {}, "teacher_eval": {},
              "runs": [], "finished": False,
              "teacher_source": "xtok_core.teacher_cache (build_teacher_cache / TeacherCache), built once per teacher; "
                                "on-policy steps from the teacher online, with the same top-K"}

    def save():
        record["elapsed_s"] = round(time.time() - t_start, 1)
        record.setdefault("load_average", []).append(round(os.getloadavg()[0], 2))
        (out / f"{args.name}.json").write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n",
                                               encoding="utf-8")

    # -- 1. teacher caches: every text of every run (all seeds) and the held-out text, once per teacher --
    teachers: dict[str, TeacherSide] = {}
    for tname in dict.fromkeys(REGIMES[r].teacher for r in regimes):
        # every method of a regime and seed reads the same batches: one pass over them per seed
        texts = [t for r in regimes if REGIMES[r].teacher == tname for s in seeds
                 for t in training_texts(run_config(setting, r, "pkl", s))]
        teachers[tname] = ts = prepare_teacher(tname, sorted(set(texts + heldout)), setting, Path(args.cache_dir), device, log)
        record["teacher_cache"][tname] = {"dir": str(ts.cache.root), "texts": len(ts.cache), "top_k": ts.cache.top_k,
                                          "bytes_per_token": round(ts.cache.bytes_per_token(), 1),
                                          "seconds": round(ts.seconds, 1)}
    for regime in regimes:
        ts = teachers[REGIMES[regime].teacher]
        ev = evaluate(ts.lm, setting, heldout, None, device)
        ev.pop("examples")
        record["teacher_eval"][regime] = {"teacher": ts.lm.spec, **ev}
    save()
    # pretrained students start every run from the same weights
    pretrained = {}
    for regime in regimes:
        spec = REGIMES[regime].student
        if not spec.startswith("tiny:") and spec not in pretrained:
            lm = load_model(spec)  # its own copy, also when the same model is a teacher of another regime
            pretrained[spec] = (lm, {k: v.detach().clone() for k, v in lm.model.state_dict().items()})

    # -- 2. students, seeds outermost: after each seed the JSON holds a complete table at that many seeds --
    t_students = time.time()
    for seed in seeds:
        for regime in regimes:
            teacher = teachers[REGIMES[regime].teacher]
            for method in plan[regime]:
                cfg = run_config(setting, regime, method, seed)
                student = fresh_student(cfg, pretrained)
                t0 = time.time()
                row = {"regime": regime, "method": method, "seed": seed, "steps": cfg.steps,
                       **train(cfg, student, teacher, device)}
                ev = evaluate(student, setting, heldout, teacher, device)
                row.update({k: ev[k] for k in (*METRICS, "heldout_tokens", "examples")})
                if method in ("pkl", "pkl-onpolicy") and regime == "pkl" and "pkl-onpolicy" in methods:
                    row["exposure"] = exposure_bias(student, teacher.lm, prompts, setting.sample_lengths, device)
                row["seconds"] = round(time.time() - t0, 1)
                record["runs"].append(row)
                log(f"{regime:4s} {method:12s} seed {seed}: {ev['ce_bpb']:.3f} bits/byte, CE/token {ev['ce_token']:.3f}, "
                    f"numeral CE {ev['numeral_ce']:.3f}, top-1 {ev['top1_agree'] if ev['top1_agree'] is not None else float('nan'):.3f}, "
                    f"answer NLL {ev['answer_nll']:.2f}, acc {ev['accuracy']:.2f} ({row['seconds']:.0f}s)")
                save()
    record["students_seconds"] = round(time.time() - t_students, 1)
    record["finished"] = True
    save()
    return report(record, out, args.name)


if __name__ == "__main__":
    main()
