"""Teacher cache: run the teacher once over the data, distil many students from its stored top-K.

    build_teacher_cache("smollm2-135m-instruct", "data.txt", "cache/", top_k=64)   # or xtok teacher-cache
    cache = TeacherCache.open("cache/")
    td = cache.distribution(texts, teacher_ids, teacher_mask)   # a losses.TeacherDistribution (B, T)

The teacher's distributions are stored per *teacher* token (its own tokenization, bos included, as the
alignment sees it), so any student with any tokenizer aligns to them at train time as it does online. Per
example: the teacher's ids (int32) and, per position, its K most likely next ids (int32, most likely first),
their log-probabilities at the cache's temperature (fp16 by default; bf16 or fp32 on request), the log of the
mass outside them (fp32) and the log-probability of the actual next token (fp32; `position="chain"` needs it).
That is 6·K + 12 bytes per teacher token at fp16 (396 at K = 64).

Layout of DIR: `manifest.json` and `shard-NNNNN.safetensors`, each shard a fixed range of `shard_size`
examples in data order, concatenated (`offsets (n + 1,)` int64 delimits the examples; `text_sha256 (n, 32)`
uint8 names them). A shard is written under a temporary name and renamed into place; the manifest (also
renamed into place) lists the complete shards with their size and sha256, so a build killed at any point
leaves only complete shards, and rerunning the same command recomputes only the missing ones. Every batch of
the teacher pass lies inside one shard, in a fixed order, so a resumed build writes the same bytes as an
uninterrupted one.

The manifest pins what the cache depends on: the teacher's weights (sha256 of its parameters), its
tokenizer (sha256), the data (sha256 of the file, or of the texts), K, the temperature, the max length,
the storage dtype and the xtok version. `TeacherCache.check(...)` refuses a cache that differs from a run
in data, tokenizer or temperature with one line naming the difference; a truncated or altered shard is
refused when it is read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import XtokError

FORMAT = 1
MANIFEST = "manifest.json"
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
DEFAULT_MAX_LENGTH = 512
DEFAULT_SHARD_SIZE = 256


# ------------------------------------------------------------------------ hashes and data
def sha256_file(path: "str | Path") -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def texts_sha256(texts: Sequence[str]) -> str:
    """Hash of a list of texts given in Python (no file): of their JSON array."""
    return hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest()


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def model_sha256(model: torch.nn.Module) -> str:
    """sha256 of a model's parameters and buffers (name, dtype, shape, bytes) in name order."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy() if t.numel() else b"")
    return h.hexdigest()


def run_windows(path: "str | Path", window_tok, seq_len: int, *, text_field: str = "text",
                heldout_fraction: float = 0.02) -> list[str]:
    """The training texts a run with `--data path` sees: its documents minus the held-out ones, cut into
    windows of seq_len − 1 tokens of the student's tokenizer (`xtok_core.distill`'s own preparation)."""
    from .distill.data import read_documents, split_heldout, window_documents

    train, _ = split_heldout(read_documents(path, text_field), heldout_fraction)
    return window_documents(train, window_tok, max(1, int(seq_len) - 1))


def generated_examples(corpus_lines: int, text_chars: int, seed: int) -> list[str]:
    """Every example a run without --data draws its batches from (the generated corpus, packed): a cache of
    them serves any such run with the same corpus settings, whatever its steps and batch size."""
    from .corpus import generate_corpus
    from .distill.data import pack_examples

    return pack_examples(generate_corpus(int(corpus_lines), int(seed)), int(text_chars))


def _data(data, window_tok, windows: dict) -> tuple[list[str], str, str]:
    """(texts, description, sha256) of a data file (windowed as a run windows it) or a list of texts."""
    if isinstance(data, (str, Path)):
        texts = run_windows(data, window_tok, windows["seq_len"], text_field=windows["text_field"],
                            heldout_fraction=windows["heldout_fraction"])
        return texts, str(data), sha256_file(data)
    texts = [str(t) for t in data]
    return texts, f"<{len(texts)} texts>", texts_sha256(texts)


def _write_atomic(path: Path, payload: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    with open(tmp, "wb") as f:
        f.write(payload)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


PROGRESS = "progress.json"


def _write_progress(root: Path, **fields) -> None:
    """`progress.json`: state (building / complete / failed), examples done and total, started / updated
    times, pid: what the app's progress bar and ETA read, from any browser, after a reload. Replaced
    atomically (no fsync: it is advisory, the manifest is what counts)."""
    tmp = root / f".{PROGRESS}.tmp-{os.getpid()}"
    tmp.write_text(json.dumps({"pid": os.getpid(), "updated": time.time(), **fields}))
    os.replace(tmp, root / PROGRESS)


def _shard_name(i: int) -> str:
    return f"shard-{i:05d}.safetensors"


# ------------------------------------------------------------------------ building
def _teacher_pass(model, ids: list[list[int]], pad: int, k: int, temperature: float, device, autocast):
    """Per example (top-K ids int32 (L, K), log-probs fp32 (L, K), log tail fp32 (L,), next log-prob (L,))."""
    T = max(len(r) for r in ids)
    x = torch.full((len(ids), T), pad, dtype=torch.long)
    mask = torch.zeros((len(ids), T), dtype=torch.long)
    for i, r in enumerate(ids):
        x[i, :len(r)] = torch.as_tensor(r)
        mask[i, :len(r)] = 1
    with torch.no_grad(), autocast:
        z = model(input_ids=x.to(device), attention_mask=mask.to(device)).logits
    z = z.float() / temperature
    lse = torch.logsumexp(z, -1, keepdim=True)
    nxt = (z[:, :-1].gather(-1, x[:, 1:, None].to(z.device)) - lse[:, :-1])[..., 0]  # the actual next token
    vals, top = torch.topk(z, min(k, z.shape[-1]), dim=-1)  # sorted: the most likely first
    logp = vals - lse
    tail = torch.logsumexp(z.scatter_(-1, top, -torch.inf), -1) - lse[..., 0]
    del z
    out = []
    for i, r in enumerate(ids):  # one slice per example
        n = len(r)
        nx = torch.zeros(n, dtype=torch.float32)
        nx[:n - 1] = nxt[i, :n - 1].cpu()
        out.append((top[i, :n].to(torch.int32).cpu(), logp[i, :n].cpu(), tail[i, :n].float().cpu(), nx))
    return out


def build_teacher_cache(teacher, data, out: "str | Path", *, top_k: int = 64, temperature: float = 1.0,
                        max_length: int = DEFAULT_MAX_LENGTH, batch_size: int = 8,
                        shard_size: int = DEFAULT_SHARD_SIZE, dtype: str = "float16", device: str = "auto",
                        student=None, seq_len: int = 96, text_field: str = "text", heldout_fraction: float = 0.02,
                        corpus_lines: int = 20_000, text_chars: int = 200, seed: int = 0,
                        progress: Callable[[float, str], None] | None = None, show_progress: bool = True,
                        after_shard: Callable[[int], None] | None = None) -> "TeacherCache":
    """Run `teacher` over `data` once and store its top-K distributions in `out` (resumes a partial build).

    teacher: a model spec for `xtok_core.load_model` ("smollm2-135m-instruct", a directory, `tiny:…`) or a
    loaded model (`.model`, `.tok`). data: None for the generated corpus a run without --data trains on (every
    packed example of `corpus_lines`, `text_chars`, `seed`, the run's settings; checked), a list of texts (the
    examples as they are), or a data file as
    `xtok distill --data` reads it (.txt documents separated by blank lines, .jsonl, .parquet, .csv), cut the
    way such a run cuts it: held-out documents (`heldout_fraction`) dropped, the rest in windows of
    `seq_len` − 1 tokens of the student's tokenizer (`student`: a tokenizer or model spec, a `Tok`; default the
    teacher's). A run from the cache must use the same data, student tokenizer, seq_len and held-out fraction
    (checked). Each example is the teacher's encoding with its special tokens, cut to `max_length` tokens.
    progress(fraction, message) is called after every batch; `show_progress` draws a tqdm bar with an ETA on
    stderr; DIR/progress.json says the same to other processes (the app's progress bar). GPU when there is one (`device="auto"`), in bf16 autocast like training.
    """
    if dtype not in DTYPES:
        raise XtokError(f"unknown cache dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    if top_k < 1 or max_length < 2 or batch_size < 1 or shard_size < 1:
        raise XtokError("--top-k, --batch-size and --shard-size must be at least 1 and --max-length at least 2")
    if temperature <= 0:
        raise XtokError(f"temperature {temperature} must be positive")
    from . import __version__
    from .models import load_model, pad_id

    lm = load_model(teacher) if isinstance(teacher, str) else teacher
    spec = teacher if isinstance(teacher, str) else getattr(lm, "spec", type(lm.model).__name__)
    window_tok = _tokenizer_of(student) if student is not None else lm.tok
    windows = corpus = None
    if data is None:
        corpus = {"corpus_lines": int(corpus_lines), "text_chars": int(text_chars), "seed": int(seed)}
        data = generated_examples(**corpus)
    elif isinstance(data, (str, Path)):
        windows = {"student_tokenizer": window_tok.name, "student_tokenizer_sha256": window_tok.sha256,
                   "seq_len": int(seq_len), "text_field": text_field, "heldout_fraction": float(heldout_fraction)}
    texts, data_desc, data_sha = _data(data, window_tok, windows)
    if corpus is not None:
        data_desc = "generated corpus ({corpus_lines} lines, {text_chars} characters per example, seed {seed})".format(**corpus)
    if not texts:
        raise XtokError(f"the data {data_desc} holds no example; give it at least one non-empty line")
    dev = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                       ("cpu" if device == "auto" else device))
    model = lm.model.to(dev).eval()
    vocab = int(model.get_output_embeddings().weight.shape[0])
    k = min(int(top_k), vocab)
    params = {"format": FORMAT, "xtok_version": __version__, "teacher": str(spec),
              "teacher_sha256": model_sha256(model), "tokenizer": lm.tok.name, "tokenizer_sha256": lm.tok.sha256,
              "vocab_size": vocab, "data": data_desc, "data_sha256": data_sha, "n_examples": len(texts),
              "top_k": k, "temperature": float(temperature), "max_length": int(max_length), "dtype": dtype,
              "shard_size": int(shard_size), "add_special_tokens": True, "windows": windows, "corpus": corpus}
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    manifest = _resume_manifest(root, params)
    _store_tokenizer(lm.tok, root)
    manifest["tokenizer_source"] = lm.tok.source if lm.tok.source.startswith("bundled:") else "tokenizer"
    for stale in root.glob(".shard-*.tmp-*"):  # a build killed while writing
        stale.unlink(missing_ok=True)
    n_shards = -(-len(texts) // shard_size)
    done = {s["index"] for s in manifest["shards"]}
    total, finished = len(texts), sum(s["count"] for s in manifest["shards"])
    bar = None
    if show_progress:
        from tqdm import tqdm

        bar = tqdm(total=total, initial=finished, desc="teacher cache", unit="ex", dynamic_ncols=True)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
    pad, t0 = pad_id(lm.tok), time.time()
    resumed_from, shown = finished, 0.0
    _write_progress(root, state="building", done=finished, total=total, started=t0, resumed_from=resumed_from)
    try:
        for si in range(n_shards):
            if si in done:
                continue
            first, last = si * shard_size, min(len(texts), (si + 1) * shard_size)
            chunk = texts[first:last]
            ids = [e.ids[:max_length].tolist() for e in lm.tok.encode_batch(chunk, add_special_tokens=True)]
            parts = []
            for b in range(0, len(chunk), batch_size):
                parts += _teacher_pass(model, ids[b:b + batch_size], pad, k, float(temperature), dev, autocast)
                finished += len(ids[b:b + batch_size])
                if bar is not None:
                    bar.update(len(ids[b:b + batch_size]))
                if progress is not None:
                    rate = (time.time() - t0) / max(1, finished - resumed_from)
                    progress(finished / total, f"{finished}/{total} examples, ~{rate * (total - finished):.0f} s left")
                if time.time() - shown > 0.5:
                    shown = time.time()
                    _write_progress(root, state="building", done=finished, total=total, started=t0,
                                    resumed_from=resumed_from)
            entry = _write_shard(root, si, first, chunk, ids, parts, DTYPES[dtype])
            manifest["shards"].append(entry)
            manifest["shards"].sort(key=lambda s: s["index"])
            manifest["complete"] = len(manifest["shards"]) == n_shards
            _write_atomic(root / MANIFEST, json.dumps(manifest, indent=1).encode())
            if after_shard is not None:
                after_shard(si)
    except BaseException as e:
        error = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        _write_progress(root, state="failed", done=finished, total=total, started=t0, resumed_from=resumed_from,
                        error=error)
        raise
    finally:
        if bar is not None:
            bar.close()
    manifest["complete"] = True
    _write_atomic(root / MANIFEST, json.dumps(manifest, indent=1).encode())
    _write_progress(root, state="complete", done=total, total=total, started=t0, resumed_from=resumed_from)
    return TeacherCache.open(root)


def _tokenizer_of(student):
    """A `Tok` from a Tok, a `tiny:<tokenizer>` spec, a tokenizer name / path, or a model spec."""
    from .tok import Tok, load_tokenizer

    if isinstance(student, Tok):
        return student
    if hasattr(student, "tok"):
        return student.tok
    spec = str(student)
    if spec.startswith("tiny:"):
        return load_tokenizer(spec[len("tiny:"):])
    try:
        return load_tokenizer(spec)
    except XtokError:
        from .models import load_model

        return load_model(spec).tok


def _store_tokenizer(tok, root: Path) -> None:
    """Copy the teacher's tokenizer files into DIR/tokenizer/ (a bundled one is named, not copied), so a run
    from the cache gets the tokenizer without the model."""
    if tok.source.startswith("bundled:"):
        return
    src = Path(tok.source)
    dst = root / "tokenizer"
    dst.mkdir(exist_ok=True)
    if src.is_file():
        for f in (src, src.parent / "tokenizer_config.json", src.parent / "special_tokens_map.json"):
            if f.is_file():
                _write_atomic(dst / f.name, f.read_bytes())
    else:
        raise XtokError(f"the teacher's tokenizer {tok.source} is not a file xtok can store with the cache; load "
                        "the teacher from a directory with a tokenizer.json")


def _resume_manifest(root: Path, params: dict) -> dict:
    path = root / MANIFEST
    if not path.exists():
        return {**params, "shards": [], "complete": False}
    old = json.loads(path.read_text())
    differ = [k for k in params if k != "xtok_version" and old.get(k) != params[k]]
    if differ:
        k = differ[0]
        raise XtokError(f"{root} holds a teacher cache with other {k} ({old.get(k)!r}, now {params[k]!r}); pass a "
                        "new --out directory or remove that one")
    keep = []
    for s in old["shards"]:  # a listed shard must be whole; a damaged one is built again
        f = root / s["file"]
        if f.exists() and f.stat().st_size == s["bytes"] and sha256_file(f) == s["sha256"]:
            keep.append(s)
    return {**old, "xtok_version": params["xtok_version"], "shards": keep}


def _write_shard(root: Path, si: int, first: int, texts, ids, parts, store_dtype) -> dict:
    from safetensors.torch import save

    lengths = [len(r) for r in ids]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
    tensors = {
        "offsets": torch.from_numpy(offsets),
        "text_sha256": torch.from_numpy(np.frombuffer(b"".join(text_key(t) for t in texts), dtype=np.uint8)
                                        .reshape(len(texts), 32).copy()),
        "ids": torch.as_tensor(np.concatenate([np.asarray(r, dtype=np.int32) for r in ids])),
        "topk_ids": torch.cat([p[0] for p in parts]).contiguous(),
        "topk_log_probs": torch.cat([p[1] for p in parts]).to(store_dtype).contiguous(),
        "log_tail": torch.cat([p[2] for p in parts]).contiguous(),
        "next_log_prob": torch.cat([p[3] for p in parts]).contiguous(),
    }
    payload = save(tensors)  # no metadata: its key order varies between processes, and the bytes must not
    name = _shard_name(si)
    _write_atomic(root / name, payload)
    return {"index": si, "file": name, "first": first, "count": len(texts), "tokens": int(offsets[-1]),
            "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


# ------------------------------------------------------------------------ reading
@dataclass
class CachedTeacher:
    """What a run needs of a cached teacher instead of the model: its tokenizer and logit width."""

    tok: object
    vocab_size: int
    cache: "TeacherCache"
    model: None = None
    spec: str = ""


class TeacherCache:
    """A built teacher cache (read-only). `TeacherCache.open(dir)`; see the module docstring."""

    def __init__(self, root: Path, manifest: dict):
        self.root, self.manifest = root, manifest
        self._shards: dict[int, dict] = {}
        self._index: dict[bytes, tuple[int, int]] | None = None

    @classmethod
    def open(cls, path: "str | Path") -> "TeacherCache":
        root = Path(path)
        mf = root / MANIFEST
        if not mf.is_file():
            raise XtokError(f"{root} is not a teacher cache (no {MANIFEST}); build one with xtok teacher-cache")
        manifest = json.loads(mf.read_text())
        if manifest.get("format") != FORMAT:
            raise XtokError(f"teacher cache {root} has format {manifest.get('format')}, this xtok reads {FORMAT}; "
                            "rebuild it with xtok teacher-cache")
        if not manifest.get("complete"):
            have = sum(s["count"] for s in manifest["shards"])
            raise XtokError(f"teacher cache {root} is incomplete ({have} of {manifest['n_examples']} examples); rerun "
                            "the same xtok teacher-cache command to finish it")
        for s in manifest["shards"]:
            f = root / s["file"]
            size = f.stat().st_size if f.exists() else 0
            if size != s["bytes"]:
                raise XtokError(f"teacher cache {root}: {s['file']} is truncated or missing ({size} of {s['bytes']} "
                                "bytes); rerun the same xtok teacher-cache command to rebuild it")
        return cls(root, manifest)

    # -- what it was built with
    @property
    def top_k(self) -> int:
        return int(self.manifest["top_k"])

    @property
    def temperature(self) -> float:
        return float(self.manifest["temperature"])

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])

    def __len__(self) -> int:
        return int(self.manifest["n_examples"])

    def check(self, *, tokenizer=None, temperature: float | None = None, data_sha256: str | None = None,
              max_length: int | None = None, vocab_size: int | None = None, student_tokenizer=None,
              seq_len: int | None = None, heldout_fraction: float | None = None, text_field: str | None = None,
              corpus: dict | None = None) -> None:
        """Refuse a cache built for another run, with one line naming the first difference. The student's
        tokenizer, seq_len, held-out fraction and text field matter for a cache built from a data file: they
        decide the windows the run trains on. `corpus` (corpus_lines, text_chars, seed) is a run on the
        generated corpus: a cache of that corpus must have been built with the same settings."""
        m, root = self.manifest, self.root
        w = m.get("windows")
        if corpus is not None:
            if w is not None:
                raise XtokError(f"teacher cache {root} was built from the data file {m['data']}, this run trains on the "
                                f"generated corpus; pass --data {m['data']} or build a cache without --data")
            built = m.get("corpus")
            for key in ("corpus_lines", "text_chars", "seed"):
                if built is not None and int(built[key]) != int(corpus[key]):
                    flag = "--" + key.replace("_", "-")
                    raise XtokError(f"teacher cache {root} holds the generated corpus with {key} {built[key]}, this run "
                                    f"uses {corpus[key]}; pass {flag} {built[key]} or build the cache with {flag} "
                                    f"{corpus[key]}")
        if data_sha256 is not None and w is None:
            raise XtokError(f"teacher cache {root} was built from a list of texts ({m['data']}), not from a --data file; "
                            "build it with xtok teacher-cache --data from this run's file")
        if w is not None:
            if student_tokenizer is not None and student_tokenizer.sha256 != w["student_tokenizer_sha256"]:
                raise XtokError(f"teacher cache {root} holds windows cut for student tokenizer {w['student_tokenizer']}, "
                                f"this run's student has {student_tokenizer.name}; build it with --student for this student")
            for key, value in (("seq_len", seq_len), ("heldout_fraction", heldout_fraction), ("text_field", text_field)):
                if value is not None and value != w[key]:
                    raise XtokError(f"teacher cache {root} was built with {key} {w[key]!r}, this run uses {value!r}; "
                                    f"pass the same or rebuild the cache with it")
        if tokenizer is not None and tokenizer.sha256 != m["tokenizer_sha256"]:
            raise XtokError(f"teacher cache {root} was built with tokenizer {m['tokenizer']} (sha256 "
                            f"{m['tokenizer_sha256'][:12]}), not {tokenizer.name} ({tokenizer.sha256[:12]}); "
                            "build a cache with this teacher")
        if temperature is not None and abs(float(temperature) - self.temperature) > 1e-12 * max(1.0, self.temperature):
            raise XtokError(f"teacher cache {root} was built at temperature {self.temperature:g}, the run uses "
                            f"{float(temperature):g}; pass --temperature {self.temperature:g} or rebuild the cache")
        if data_sha256 is not None and data_sha256 != m["data_sha256"]:
            raise XtokError(f"teacher cache {root} was built from other data ({m['data']}, sha256 "
                            f"{m['data_sha256'][:12]}; this run's data has {data_sha256[:12]}); build a cache from "
                            "this data")
        if max_length is not None and max_length > int(m["max_length"]):
            raise XtokError(f"teacher cache {root} holds {m['max_length']} tokens per example, the run needs "
                            f"{max_length}; lower --seq-len or rebuild with --max-length {max_length}")
        if vocab_size is not None and vocab_size != self.vocab_size:
            raise XtokError(f"teacher cache {root} has logits of width {self.vocab_size}, the run expects {vocab_size}; "
                            "build the cache with the same teacher model")

    def shard(self, si: int) -> dict:
        """Shard si's tensors (read once, sha256 checked against the manifest)."""
        if si not in self._shards:
            from safetensors.torch import load

            entry = self.manifest["shards"][si]
            payload = (self.root / entry["file"]).read_bytes()
            if len(payload) != entry["bytes"] or hashlib.sha256(payload).hexdigest() != entry["sha256"]:
                raise XtokError(f"teacher cache {self.root}: {entry['file']} is truncated or altered (its sha256 differs "
                                "from the manifest); rerun the same xtok teacher-cache command to rebuild it")
            self._shards[si] = load(payload)
        return self._shards[si]

    def _locate(self, text: str) -> tuple[int, int]:
        if self._index is None:
            from safetensors import safe_open

            self._index = {}
            for si, entry in enumerate(self.manifest["shards"]):
                with safe_open(str(self.root / entry["file"]), framework="pt") as f:
                    keys = f.get_tensor("text_sha256").numpy()
                for row in range(len(keys)):
                    self._index.setdefault(keys[row].tobytes(), (si, row))
        key = text_key(text)
        if key not in self._index:
            raise XtokError(f"a training text is not in teacher cache {self.root} (built from {self.manifest['data']}); "
                            f"build the cache from this run's data: {text[:40]!r}…")
        return self._index[key]

    def example(self, text: str) -> dict:
        """One example's stored arrays: ids (L,), topk_ids (L, K), topk_log_probs, log_tail, next_log_prob."""
        si, row = self._locate(text)
        sh = self.shard(si)
        a, b = int(sh["offsets"][row]), int(sh["offsets"][row + 1])
        return {k: sh[k][a:b] for k in ("ids", "topk_ids", "topk_log_probs", "log_tail", "next_log_prob")}

    def distribution(self, texts: Sequence[str], teacher_ids: torch.Tensor, teacher_mask: torch.Tensor):
        """The teacher's `TeacherDistribution (B, T)` for a batch whose teacher ids (B, T) and mask come from
        the alignment: each row's kept ids must be a prefix of the cached ids (else: other tokenizer or data)."""
        from .losses import TeacherDistribution

        B, T = teacher_ids.shape
        k = self.top_k
        ids = torch.arange(k, dtype=torch.long).repeat(B, T, 1)  # padding rows: any distinct ids
        logp = torch.full((B, T, k), -np.log(k), dtype=torch.float32)
        tail = torch.full((B, T), -torch.inf, dtype=torch.float32)
        nxt = torch.zeros((B, T), dtype=torch.float32)
        lengths = teacher_mask.sum(-1).tolist()
        cpu_ids = teacher_ids.cpu()
        for b, (text, n) in enumerate(zip(texts, lengths)):  # one slice per example, not per token
            ex = self.example(text)
            n = int(n)
            if n > len(ex["ids"]) or not torch.equal(ex["ids"][:n].long(), cpu_ids[b, :n]):
                raise XtokError(f"teacher cache {self.root} holds other teacher tokens for {text[:40]!r}… than this "
                                "run's tokenizer gives; build the cache with this teacher and tokenizer")
            ids[b, :n] = ex["topk_ids"][:n].long()
            logp[b, :n] = ex["topk_log_probs"][:n].float()
            tail[b, :n] = ex["log_tail"][:n]
            nxt[b, :n] = ex["next_log_prob"][:n]
        dev = teacher_ids.device
        return TeacherDistribution.from_topk(ids.to(dev), logp.to(dev), tail.to(dev), self.vocab_size,
                                             self.temperature, next_log_prob=nxt.to(dev))

    def tokenizer(self):
        """The teacher's tokenizer, as stored in the cache (its sha256 checked against the manifest)."""
        from .tok import load_tokenizer

        src = self.manifest.get("tokenizer_source", "")
        tok = load_tokenizer(src[len("bundled:"):] if src.startswith("bundled:") else self.root / "tokenizer")
        if tok.sha256 != self.manifest["tokenizer_sha256"]:
            raise XtokError(f"teacher cache {self.root}: its stored tokenizer differs from the manifest's sha256; "
                            "rebuild the cache")
        return tok

    def teacher(self) -> CachedTeacher:
        """A stand-in for the teacher model in a run: its tokenizer and logit width (no weights loaded)."""
        tok = self.tokenizer()
        return CachedTeacher(tok=tok, vocab_size=self.vocab_size, cache=self, spec=self.manifest["teacher"])

    def bytes_per_token(self) -> float:
        total = sum(s["bytes"] for s in self.manifest["shards"])
        return total / max(1, sum(s["tokens"] for s in self.manifest["shards"]))
