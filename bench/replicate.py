"""Mini-replication: does P-KL beat GOLD on numerals when the teacher splits every digit?

The X-Token paper reports, for a Qwen teacher and a Llama student (its P-KL regime), GOLD 35.03 ->
P-KL 38.85 on average and GSM8k 2.56 -> 15.54, and H-KL >= GOLD for a teacher whose numerals match
the student's. This script checks the direction of those claims with tiny models on the project's
generated corpus (arithmetic, prices, dates, code, prose):

  regime "pkl": student tiny:llama-3.2, teacher tiny:qwen2.5      (Qwen splits every digit)
  regime "hkl": student tiny:llama-3.2, teacher tiny:deepseek-v3  (digits in groups of <= 3, as Llama-3)

For each regime the demo teacher is trained once on the corpus (cached under --runs-dir), then fresh
students are distilled with CE only, ULD, GOLD, H-KL and P-KL: same steps, data, learning rate and
initialisation per seed, dynamic KD/CE scaling on (λ = sg(CE)/sg(KD)). The CE-only student has no
teacher, so one set of CE runs serves both regimes. Every student is evaluated on

  accuracy     greedy exact match on held-out additions ("123 + 456 =" -> " 579")
  answer_nll   nats per answer of the correct held-out answer, teacher-forced (a smooth version of
               the above: it moves long before exact match does)
  heldout_ce   student next-token CE in nats per Llama-3 token on held-out generated text (a corpus
               seed no run trains on); every student shares the Llama-3 tokenizer, so per-token
               figures compare directly; heldout_bpb gives bits per UTF-8 byte, which also places
               the teachers on the same scale
  numeral_ce   the same CE restricted to target tokens that contain a digit

Mean ± spread over seeds, spread = sample standard deviation (n-1). Paired differences P-KL − GOLD
and H-KL − GOLD use the same seed on both sides (same data order and same student initialisation).

    python bench/replicate.py --quick            # 2-core CPU: students 8.5 min once the two teachers are cached
                                                 # (training them took 19 min side by side on a loaded machine)
    python bench/replicate.py                    # the larger setting, for a GPU
    python bench/replicate.py --quick --methods gold,pkl --regimes pkl --seeds 2
    # one process per seed on a machine shared with other work, then one table from the three JSONs:
    python bench/replicate.py --quick --seeds 1 --first-seed K --out runs/replicate/parts --name replicate-seedK
    python bench/replicate.py --from-json runs/replicate/parts/replicate-seed*.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _measure import machine, table  # noqa: E402

from xtok_core.corpus import arithmetic_eval_set, generate_corpus  # noqa: E402
from xtok_core.distill import DistillConfig, load_model_dir, run_distillation, train_demo_teacher  # noqa: E402
from xtok_core.distill.data import encode_padded, pack_examples  # noqa: E402
from xtok_core.tok import Tok, load_tokenizer  # noqa: E402

STUDENT = "llama-3.2"
METHODS = ("ce", "uld", "gold", "hkl", "pkl")
REGIMES = {
    "pkl": ("qwen2.5", "Qwen2.5 teacher: splits every digit, no multi-digit numeral of Llama-3 is an exact match"),
    "hkl": ("deepseek-v3", "DeepSeek-V3 teacher: digits in groups of <= 3 like Llama-3, numerals match exactly"),
}
METRICS = ("accuracy", "answer_nll", "heldout_ce", "numeral_ce", "heldout_bpb")
LABELS = {"ce": "CE only", "uld": "ULD", "gold": "GOLD", "hkl": "H-KL", "pkl": "P-KL"}
LOWER_IS_BETTER = {"answer_nll", "heldout_ce", "numeral_ce", "heldout_bpb"}
HELDOUT_SEED = 99_991   # corpus seed of the held-out text; training corpora use the run seeds 0, 1, 2, ...
TIE = 1e-3              # paired differences this small are ties
EVAL_SEED = 1234        # arithmetic_eval_set seed (its pairs are held out of every training corpus anyway)


@dataclass
class Setting:
    """Sizes of one benchmark setting; every student of a setting gets exactly these."""

    steps: int              # distillation steps per student
    batch_size: int
    seq_len: int
    lr: float
    dim: int                # student hidden size (its vocabulary is Llama-3's 128,256 tokens)
    layers: int
    teacher_steps: int      # demo-teacher training steps (cached: paid once per setting and teacher)
    teacher_dim: int
    teacher_layers: int
    teacher_batch: int
    teacher_lr: float
    teacher_seq_len: int
    eval_size: int          # held-out additions
    heldout_texts: int      # held-out packed texts for the CE metrics
    seeds: int
    corpus_lines: int = 20_000


SETTINGS = {
    # 2-core CPU: the cost is the 128k-151k vocabularies (logits, softmax, W), so the model bodies are small
    "quick": Setting(steps=24, batch_size=4, seq_len=32, lr=3e-3, dim=64, layers=2, teacher_steps=120, teacher_dim=96,
                     teacher_layers=2, teacher_batch=8, teacher_lr=3e-3, teacher_seq_len=64, eval_size=32,
                     heldout_texts=16, seeds=3, corpus_lines=4_000),
    # one GPU: the package's default student and demo-teacher sizes, longer training
    "full": Setting(steps=2000, batch_size=16, seq_len=128, lr=1e-3, dim=192, layers=6, teacher_steps=4000,
                    teacher_dim=256, teacher_layers=4, teacher_batch=32, teacher_lr=2e-3, teacher_seq_len=128, eval_size=256,
                    heldout_texts=256, seeds=3),
}


# ------------------------------------------------------------------------ evaluation
def _numeral_ids(tok: Tok, ids: np.ndarray) -> np.ndarray:
    """Bool mask over `ids`: the token's bytes contain an ASCII digit (decided once per distinct id)."""
    uniq, inverse = np.unique(ids, return_inverse=True)
    digit = np.array([any(48 <= c <= 57 for c in (tok.token_bytes[i] or b"")) if i < len(tok.token_bytes) else False
                      for i in uniq.tolist()], dtype=bool)
    return digit[inverse].reshape(ids.shape)


@torch.no_grad()
def heldout_loss(model: torch.nn.Module, tok: Tok, texts: list[str], *, device, batch_size: int = 8,
                 max_length: int = 512) -> dict:
    """Next-token CE on `texts` (bos added when the tokenizer has one): nats per token, nats per token
    on digit-bearing targets, and bits per UTF-8 byte of the texts."""
    model.eval()
    nll_sum = tok_count = num_sum = num_count = 0.0
    for i in range(0, len(texts), batch_size):
        ids, mask = encode_padded(tok, texts[i:i + batch_size], max_length)
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask.long()).logits.float()
        target, valid = ids[:, 1:], mask[:, 1:] & mask[:, :-1]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), target.flatten(), reduction="none").view(target.shape)
        digit = torch.from_numpy(_numeral_ids(tok, target.cpu().numpy())).to(device) & valid
        nll_sum += float(nll[valid].sum())
        tok_count += float(valid.sum())
        num_sum += float(nll[digit].sum())
        num_count += float(digit.sum())
    n_bytes = sum(len(t.encode()) for t in texts)
    return {"heldout_ce": nll_sum / max(tok_count, 1), "numeral_ce": num_sum / max(num_count, 1),
            "heldout_bpb": nll_sum / n_bytes / math.log(2), "heldout_tokens": int(tok_count)}


@torch.no_grad()
def answer_nll(model: torch.nn.Module, tok: Tok, pairs: list[tuple[str, str]], *, device, batch_size: int = 32) -> float:
    """Mean over held-out additions of -log p(answer | prompt), teacher-forced, in nats per answer.

    The answer tokens are those starting at or after the prompt's last byte in the encoding of
    prompt + answer, so the figure does not depend on where a tokenizer puts the space."""
    return float(answer_nlls(model, tok, pairs, device=device, batch_size=batch_size).mean())


@torch.no_grad()
def answer_nlls(model: torch.nn.Module, tok: Tok, pairs: list[tuple[str, str]], *, device, batch_size: int = 32,
                max_length: int = 64) -> np.ndarray:
    """-log p(answer | prompt) of each (prompt, answer) pair, teacher-forced, in nats (see `answer_nll`)."""
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i:i + batch_size]
        texts = [p + a for p, a in chunk]
        ids, mask = encode_padded(tok, texts, max_length)
        encs = tok.encode_batch(texts, add_special_tokens=True)
        answer = torch.zeros_like(mask)
        for r, (enc, (p, _)) in enumerate(zip(encs, chunk)):  # one vector op per example
            off = torch.as_tensor(np.asarray(enc.offsets).reshape(-1, 2)[: answer.shape[1]])
            # text tokens from the prompt's end on (special tokens are empty spans: never answer)
            answer[r, : len(off)] = (off[:, 0] >= len(p.encode())) & (off[:, 1] > off[:, 0])
        ids, mask, answer = ids.to(device), mask.to(device), answer.to(device)
        logits = model(input_ids=ids, attention_mask=mask.long()).logits.float()
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten(), reduction="none").view(ids[:, 1:].shape)
        out.append((nll * (answer[:, 1:] & mask[:, 1:])).sum(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def evaluate(model: torch.nn.Module, tok: Tok, setting: Setting, device, heldout: list[str]) -> dict:
    from xtok_core.distill import arithmetic_accuracy

    model = model.to(device)
    pairs = arithmetic_eval_set(setting.eval_size, EVAL_SEED)
    acc = arithmetic_accuracy(model, tok, n=setting.eval_size, seed=EVAL_SEED, device=device)
    return {"accuracy": acc["accuracy"], "answer_nll": answer_nll(model, tok, pairs, device=device),
            **heldout_loss(model, tok, heldout, device=device), "examples": acc["examples"]}


def heldout_texts(n: int, chars: int = 200) -> list[str]:
    """`n` packed texts of about `chars` characters from a corpus seed no training run uses."""
    return pack_examples(generate_corpus(n * 4, HELDOUT_SEED), chars)[:n]


# ------------------------------------------------------------------------ runs
def resolve_device(device: str) -> str:
    if device in ("auto", "cuda") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def prepare_teacher(name: str, setting: Setting, runs_dir: Path, device: str, log) -> tuple[Path, float]:
    """The cached demo teacher for this setting (trained now if absent) and the seconds it took."""
    t0 = time.time()
    path = train_demo_teacher(name, steps=setting.teacher_steps, dim=setting.teacher_dim, layers=setting.teacher_layers,
                         runs_dir=str(runs_dir), device=device, progress=False, log=log,
                         batch_size=setting.teacher_batch, seq_len=setting.teacher_seq_len, lr=setting.teacher_lr)
    if not (path / "teacher.json").is_file():
        raise SystemExit(f"teacher {name} stopped before finishing; run the command again to resume it")
    return path, time.time() - t0


def student_config(setting: Setting, method: str, teacher_dir: Path | None, seed: int, runs_dir: Path,
                   device: str) -> DistillConfig:
    return DistillConfig(
        student=f"tiny:{STUDENT}", teachers=[str(teacher_dir)] if method != "ce" else [], loss=method,
        kd_weight=None, steps=setting.steps, batch_size=setting.batch_size, seq_len=setting.seq_len, lr=setting.lr,
        warmup=max(1, setting.steps // 10), seed=seed, corpus_lines=setting.corpus_lines, tiny_dim=setting.dim,
        tiny_layers=setting.layers, eval_every=0, checkpoint_every=setting.steps, keep_checkpoints=1,
        runs_dir=str(runs_dir), device=device)


def one_run(setting: Setting, regime: str, method: str, seed: int, teacher_dir: Path | None, runs_dir: Path,
            device: str, heldout: list[str], log) -> dict:
    out = runs_dir / "students" / f"{regime if method != 'ce' else 'shared'}-{method}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = student_config(setting, method, teacher_dir, seed, runs_dir, device)
    t0 = time.time()
    result = run_distillation(cfg, out, progress=False, log=log)
    if result.state != "finished":  # SIGTERM checkpoints and stops the run: stop the benchmark too
        raise SystemExit(f"{out} {result.state} at step {result.step}; the results so far are in the JSON")
    train_s = time.time() - t0
    ev = evaluate(result.student.model, result.student.tok, setting, device, heldout)
    last = result.metrics[-1]
    tail = result.metrics[-max(1, len(result.metrics) // 10):]
    shutil.rmtree(out / "checkpoints", ignore_errors=True)  # 100+ MB each; metrics.jsonl stays
    return {"regime": regime, "method": method, "seed": seed, **{k: ev[k] for k in METRICS},
            "heldout_tokens": ev["heldout_tokens"], "examples": ev["examples"],
            "train_ce_last10pct": float(np.mean([m["ce"] for m in tail])),
            "kd_last": last.get("kd"), "lambda_last": last.get("lambda"),
            # dynamic scaling sets λ = 0 on a step whose KD is not positive (GOLD/H-KL's partial KL can be
            # negative): such a step is CE only
            "kd_off_steps": sum(1 for m in result.metrics if method != "ce" and not m.get("lambda")),
            "unreachable_mass_last": next((v for k, v in last.items() if k.startswith("unreachable_mass")), None),
            "steps": result.step, "train_seconds": round(train_s, 1), "seconds": round(time.time() - t0, 1),
            "run_dir": str(out)}


# ------------------------------------------------------------------------ summary
def summarize(runs: list[dict], regimes: list[str], methods: list[str], metrics=METRICS, shared_ce: bool = True) -> dict:
    """{regime: {method: {metric: {"mean", "spread", "n", "values"}}}}; with `shared_ce` CE-only rows serve
    every regime (they have no teacher and every regime has the same student). A metric a run lacks
    (None) is left out of that cell."""
    out = {}
    for regime in regimes:
        out[regime] = {}
        for method in methods:
            rows = [r for r in runs if r["method"] == method and ((shared_ce and method == "ce") or r["regime"] == regime)]
            if not rows:
                continue
            out[regime][method] = {}
            for m in metrics:
                v = np.array([r[m] for r in sorted(rows, key=lambda r: r["seed"]) if r.get(m) is not None], dtype=float)
                if not len(v):
                    continue
                out[regime][method][m] = {"mean": float(v.mean()), "spread": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                                          "n": len(v), "values": v.tolist()}
    return out


def paired(runs: list[dict], regime: str, a: str, b: str, metric: str) -> dict | None:
    """Per-seed difference a − b on `metric` (same seed: same data and student initialisation)."""
    by = {(r["method"], r["seed"]): r[metric] for r in runs if r["method"] == "ce" or r["regime"] == regime}
    seeds = sorted({s for (m, s) in by if m == a} & {s for (m, s) in by if m == b})
    if not seeds:
        return None
    d = np.array([by[(a, s)] - by[(b, s)] for s in seeds])
    # a difference within TIE counts for neither side (H-KL and GOLD often differ by float noise)
    better = int((d < -TIE).sum() if metric in LOWER_IS_BETTER else (d > TIE).sum())
    return {"metric": metric, "mean": float(d.mean()), "spread": float(d.std(ddof=1)) if len(d) > 1 else 0.0,
            "seeds": seeds, "a_better_on": better, "values": d.tolist()}


def _fmt(cell: dict, metric: str) -> str:
    if metric == "accuracy":
        return f"{100 * cell['mean']:.1f} ± {100 * cell['spread']:.1f}"
    return f"{cell['mean']:.3f} ± {cell['spread']:.3f}"


def result_table(summary: dict, regimes: list[str], methods: list[str]) -> str:
    headers = ["regime", "teacher", "method", "seeds", "accuracy %", "answer NLL", "held-out CE/token",
               "numeral CE/token", "bits/byte"]
    rows = []
    for regime in regimes:
        for method in methods:
            cell = summary.get(regime, {}).get(method)
            if cell:
                rows.append([regime, REGIMES[regime][0] if method != "ce" else "(none)", LABELS[method],
                             cell["accuracy"]["n"], *(_fmt(cell[m], m) for m in METRICS)])
    return table(headers, rows)


def comparisons(runs: list[dict], regimes: list[str], methods: list[str]) -> list[dict]:
    out = []
    for regime in regimes:
        for a in ("pkl", "hkl"):
            if a in methods and "gold" in methods:
                for metric in ("accuracy", "answer_nll", "numeral_ce", "heldout_ce"):
                    d = paired(runs, regime, a, "gold", metric)
                    if d:
                        out.append({"regime": regime, "a": a, "b": "gold", **d})
    return out


def comparison_table(comps: list[dict]) -> str:
    rows = [[c["regime"], f"{LABELS[c['a']]} − GOLD", c["metric"],
             f"{c['mean']:+.4f} ± {c['spread']:.4f}", f"{c['a_better_on']}/{len(c['seeds'])}"] for c in comps]
    return table(["regime", "difference", "metric", "mean ± spread (paired by seed)", "A better on seeds (ties within 0.001 excluded)"], rows)


# ------------------------------------------------------------------------ chart
def write_charts(summary: dict, regimes: list[str], methods: list[str], out: Path, title: str,
                 stem: str = "replicate") -> list[Path]:
    panels = [("accuracy", "exact match on held-out additions (%)", 100.0), ("answer_nll", "answer NLL (nats, lower is better)", 1.0),
              ("numeral_ce", "numeral CE per token (lower is better)", 1.0), ("heldout_ce", "held-out CE per token (lower is better)", 1.0)]
    names = [LABELS[m] for m in methods]
    colors = {"pkl": "#d62728", "hkl": "#1f77b4"}
    written = []
    try:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[p[1] for p in panels])
        for col, (metric, _, scale) in enumerate(panels, start=1):
            for regime in regimes:
                cells = [summary[regime].get(m, {}).get(metric) for m in methods]
                fig.add_trace(go.Bar(
                    name=f"{regime} regime ({REGIMES[regime][0]} teacher)", x=names, marker_color=colors.get(regime),
                    y=[c["mean"] * scale if c else None for c in cells], showlegend=col == 1, legendgroup=regime,
                    error_y=dict(type="data", array=[c["spread"] * scale if c else 0 for c in cells])), row=1, col=col)
        fig.update_layout(barmode="group", title=title, height=460, width=1500, template="plotly_white")
        path = out / f"{stem}.html"
        fig.write_html(str(path), include_plotlyjs="cdn")  # keeps the committed file small
        written.append(path)
    except ImportError:
        pass
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(18, 4.2))
    x = np.arange(len(methods))
    width = 0.8 / max(1, len(regimes))
    for ax, (metric, label, scale) in zip(axes, panels):
        for k, regime in enumerate(regimes):
            cells = [summary[regime].get(m, {}).get(metric) for m in methods]
            ax.bar(x + (k - (len(regimes) - 1) / 2) * width, [c["mean"] * scale if c else np.nan for c in cells], width,
                   yerr=[c["spread"] * scale if c else 0 for c in cells], capsize=3, color=colors.get(regime),
                   label=f"{regime} regime ({REGIMES[regime][0]})")
        ax.set_xticks(x, names)
        ax.set_title(label, fontsize=9)
        if metric == "accuracy":
            ax.set_ylim(0, max(5.0, ax.get_ylim()[1]))
        else:
            lo = min(summary[r][m][metric]["mean"] - summary[r][m][metric]["spread"] for r in regimes for m in methods
                     if m in summary[r])
            hi = max(summary[r][m][metric]["mean"] + summary[r][m][metric]["spread"] for r in regimes for m in methods
                     if m in summary[r])
            ax.set_ylim(lo - 0.1 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = out / f"{stem}.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    written.append(path)
    return written


# ------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="the 2-core CPU setting (teachers are trained once and cached)")
    ap.add_argument("--seeds", type=int, help="seeds per method (0, 1, ...); default 3")
    ap.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed, first-seed + 1, ...: split one "
                    "benchmark over processes, then merge their JSONs with --from-json")
    ap.add_argument("--steps", type=int, help="distillation steps per student")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"comma list of {', '.join(METHODS)}")
    ap.add_argument("--regimes", default=",".join(REGIMES), help=f"comma list of {', '.join(REGIMES)}")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"),
                    help="folder for replicate.json, replicate.html and replicate.png")
    ap.add_argument("--runs-dir", default="runs/replicate", help="run directories and cached teachers")
    ap.add_argument("--device", default="auto", help="auto | cpu | cuda")
    ap.add_argument("--name", default="replicate", help="file stem of the outputs")
    ap.add_argument("--from-json", nargs="+", metavar="JSON",
                    help="only print the tables and redraw the charts of written JSONs (partial runs too; several are merged)")
    # smaller than --quick: the test suite's size
    for name in ("teacher-steps", "eval-size", "heldout-texts", "dim", "layers", "batch-size", "seq-len",
                 "teacher-dim", "teacher-layers", "teacher-batch", "teacher-seq-len", "corpus-lines"):
        ap.add_argument(f"--{name}", type=int, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def build_setting(args) -> tuple[str, Setting]:
    name = "quick" if args.quick else "full"
    s = SETTINGS[name]
    overrides = {k: getattr(args, k) for k in ("seeds", "steps", "teacher_steps", "eval_size", "heldout_texts", "dim",
                                                "layers", "batch_size", "seq_len", "teacher_dim", "teacher_layers",
                                                "teacher_batch", "teacher_seq_len", "corpus_lines")
                 if getattr(args, k) is not None}
    return name, replace(s, **overrides)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.from_json:
        return report_from_json(args.from_json, Path(args.out), args.name)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    regimes = [r.strip() for r in args.regimes.split(",") if r.strip()]
    bad = [m for m in methods if m not in METHODS] + [r for r in regimes if r not in REGIMES]
    if bad:
        raise SystemExit(f"unknown method or regime {bad}; methods: {', '.join(METHODS)}; regimes: {', '.join(REGIMES)}")
    name, setting = build_setting(args)
    device = resolve_device(args.device)
    out, runs_dir = Path(args.out), Path(args.runs_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')} +{time.time() - t_start:6.0f}s] {msg}", file=sys.stderr, flush=True)

    heldout = heldout_texts(setting.heldout_texts)
    record = {"setting": name, "sizes": asdict(setting), "methods": methods, "regimes": regimes, "student": STUDENT,
              "teachers": {r: REGIMES[r][0] for r in regimes}, "device": device, "machine": machine(),
              "platform": platform.platform(), "command": "python bench/replicate.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "teacher_eval": {}, "runs": [], "finished": False}
    json_path = out / f"{args.name}.json"

    def save():
        record["elapsed_s"] = round(time.time() - t_start, 1)
        record.setdefault("load_average", []).append(round(os.getloadavg()[0], 2))  # other work on the machine
        json_path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")

    teacher_dirs = {}
    if any(m != "ce" for m in methods):
        for regime in regimes:
            tname = REGIMES[regime][0]
            path, secs = prepare_teacher(tname, setting, runs_dir, device, log)
            teacher_dirs[regime] = path
            loaded = load_model_dir(path)
            ev = evaluate(loaded.model, loaded.tok, setting, device, heldout)
            ev.pop("examples")
            record["teacher_eval"][regime] = {"teacher": tname, "dir": str(path), "prepare_seconds": round(secs, 1), **ev}
            log(f"teacher {tname}: {secs:.0f}s, accuracy {ev['accuracy']:.3f}, answer NLL {ev['answer_nll']:.3f}, "
                f"{ev['heldout_bpb']:.3f} bits/byte")
            del loaded
    t_students = time.time()
    # seeds outermost: after each seed the JSON holds a complete table at that many seeds
    for seed in range(args.first_seed, args.first_seed + setting.seeds):
        for regime in regimes:
            for method in methods:
                if method == "ce" and regime != regimes[0]:
                    continue  # no teacher: one CE run per seed serves every regime
                row = one_run(setting, regime, method, seed, teacher_dirs.get(regime), runs_dir, device, heldout, log)
                record["runs"].append(row)
                log(f"{regime:3s} {method:4s} seed {seed}: acc {row['accuracy']:.3f}  answer NLL {row['answer_nll']:.3f}  "
                    f"CE/token {row['heldout_ce']:.4f}  numeral CE {row['numeral_ce']:.4f}  ({row['seconds']:.0f}s)")
                save()
    record["students_seconds"] = round(time.time() - t_students, 1)
    record["finished"] = True
    save()
    return report(record, out, args.name)


def report(record: dict, out: Path, stem: str) -> dict:
    """Summary, paired comparisons, tables and charts of a record (finished, or partial: the seeds so far)."""
    regimes, methods, sizes = record["regimes"], record["methods"], record["sizes"]
    record["summary"] = summarize(record["runs"], regimes, methods)
    record["comparisons"] = comparisons(record["runs"], regimes, methods)
    record["table"] = result_table(record["summary"], regimes, methods)
    record["comparison_table"] = comparison_table(record["comparisons"])
    json_path = out / f"{stem}.json"
    json_path.write_text(json.dumps(record, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    seeds = sorted({r["seed"] for r in record["runs"]})
    title = (f"xtok mini-replication ({record['setting']}: {sizes['steps']} steps, {len(seeds)} seeds, student "
             f"{sizes['dim']}x{sizes['layers']}, {record['device']})")
    charts = write_charts(record["summary"], regimes, methods, out, title, stem=stem)
    md = out / f"{stem}.md"
    md.write_text(f"{title}\n\nmachine: {record['machine']}\n\ncommand: `{record['command']}`\n\n{record['table']}\n\n"
                  f"{record['comparison_table']}\n", encoding="utf-8")
    charts.append(md)
    print(f"\n{title}\nmachine: {record['machine']}\n")
    print(record["table"])
    print()
    print(record["comparison_table"])
    print(f"\nwrote {json_path}, {', '.join(str(p) for p in charts)}; {record.get('elapsed_s', 0):.0f}s in all, "
          f"students {record.get('students_seconds', 0):.0f}s" + ("" if record["finished"] else " (partial)"))
    return record


def merge_records(records: list[dict]) -> dict:
    """One record from several written ones (e.g. one process per regime on a shared machine)."""
    merged = dict(records[0])
    merged["regimes"] = [r for rec in records for r in rec["regimes"]]
    merged["regimes"] = sorted(set(merged["regimes"]), key=merged["regimes"].index)
    merged["teachers"] = {k: v for rec in records for k, v in rec["teachers"].items()}
    merged["teacher_eval"] = {k: v for rec in records for k, v in rec["teacher_eval"].items()}
    seen, merged["runs"] = set(), []
    for rec in records:
        for run in rec["runs"]:
            key = (run["method"], run["seed"]) if run["method"] == "ce" else (run["regime"], run["method"], run["seed"])
            if key not in seen:
                seen.add(key)
                merged["runs"].append(run)
    merged["finished"] = all(rec["finished"] for rec in records)
    merged["command"] = " & ".join(rec["command"] for rec in records)
    merged["processes"] = len(records)
    for key in ("elapsed_s", "students_seconds"):  # the processes ran side by side
        merged[key] = max(rec.get(key, 0) for rec in records)
    merged["sizes"] = {**records[0]["sizes"], "seeds": len({r["seed"] for r in merged["runs"]})}
    merged["load_average"] = [x for rec in records for x in rec.get("load_average", [])]
    return merged


def report_from_json(paths: list[str], out: Path, stem: str) -> dict:
    """`--from-json`: tables and charts again from written (possibly partial) records; several are merged."""
    records = [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    if len(records) == 1:
        return report(records[0], Path(paths[0]).parent, Path(paths[0]).stem)
    return report(merge_records(records), out, stem)

if __name__ == "__main__":
    main()
