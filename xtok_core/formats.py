"""W's files: xtok's safetensors (`Projection.save` / `.load`), NeMo-RL's top-k `.pt` (`.save_nemo` /
`.load_nemo`, whose exact rows are inferred with the tokenizer's bytes index, the builder's rule) and CSV."""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .errors import XtokError
from .projection import EXACT, FORMAT_VERSION, ROW_KINDS, PADDING, RETOKENIZED, SPECIAL, _assemble
from .tok import load_tokenizer


def metadata(proj) -> dict:
    return {"format": "xtok-projection", "format_version": FORMAT_VERSION, "xtok_version": proj.xtok_version,
            "student": {"name": proj.student_name, "sha256": proj.student_sha256, "vocab_size": proj.shape[0]},
            "teacher": {"name": proj.teacher_name, "sha256": proj.teacher_sha256, "vocab_size": proj.shape[1]},
            "params": proj.params, "kinds": list(ROW_KINDS)}

def save(proj, path) -> Path:
    """safetensors: indptr, indices, data, kinds, n_pieces, role_matched + one canonical JSON metadata key."""
    from safetensors.numpy import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    m = proj.matrix
    tensors = {"indptr": m.indptr.astype(np.int64), "indices": m.indices.astype(np.int32), "data": m.data.astype(np.float32),
               "kinds": proj.kinds.astype(np.uint8), "n_pieces": proj.n_pieces.astype(np.int16),
               "role_matched": proj.role_matched.astype(np.uint8)}
    meta = json.dumps(metadata(proj), sort_keys=True, separators=(",", ":"))
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp), metadata={"xtok": meta})
    os.replace(tmp, path)
    return path

def load(cls, path, student=None, teacher=None):
    """Load a W saved by `save`; with tokenizers given, their hashes must match the file's."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise XtokError(f"W file {path} does not exist; build one with xtok build-w --student S --teacher T --out {path}")
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = json.loads((f.metadata() or {})["xtok"])
            arrays = {k: f.get_tensor(k) for k in ("indptr", "indices", "data", "kinds", "n_pieces", "role_matched")}
    except Exception as e:  # noqa: BLE001 - truncated, not safetensors, or not ours
        reason = str(e).splitlines()[0][:100] if str(e) else type(e).__name__
        raise XtokError(f"{path} is not a readable xtok W file ({reason}); rebuild it with xtok build-w") from None
    if meta.get("format") != "xtok-projection" or meta.get("format_version", 0) > FORMAT_VERSION:
        raise XtokError(f"{path} has format {meta.get('format')} v{meta.get('format_version')}, this xtok reads v{FORMAT_VERSION}; "
                        f"rebuild it with this xtok's build-w")
    V_s, V_t = meta["student"]["vocab_size"], meta["teacher"]["vocab_size"]
    ip, ix, d = arrays["indptr"], arrays["indices"], arrays["data"]
    if len(ip) != V_s + 1 or ip[-1] != len(ix) or len(ix) != len(d) or (len(ix) and ix.max() >= V_t) or len(arrays["kinds"]) != V_s:
        raise XtokError(f"{path} is inconsistent (array sizes do not match a {V_s:,} x {V_t:,} W); rebuild it with xtok build-w")
    s = load_tokenizer(student) if student is not None else None
    t = load_tokenizer(teacher) if teacher is not None else None
    proj = cls(sp.csr_array((d, ix, ip), shape=(V_s, V_t)), arrays["kinds"], arrays["n_pieces"],
               arrays["role_matched"].astype(bool), params=meta["params"], student_name=meta["student"]["name"],
               teacher_name=meta["teacher"]["name"], student_sha256=meta["student"]["sha256"],
               teacher_sha256=meta["teacher"]["sha256"], xtok_version=meta.get("xtok_version"))
    proj.check_tokenizers(s, t)
    proj.student, proj.teacher = s, t
    return proj

def to_nemo(proj) -> dict:
    """NeMo-RL's top-k layout: indices / likelihoods (V_s, top_k), heaviest first, -1 / 0 padding."""
    import torch

    m = proj.matrix
    k = max(int(np.diff(m.indptr).max(initial=0)), 1)
    counts = np.diff(m.indptr)
    rows = np.repeat(np.arange(m.shape[0]), counts)
    order = np.lexsort((m.indices, -m.data, rows))
    slot = np.arange(len(order)) - np.repeat(m.indptr[:-1], counts)
    idx = np.full((m.shape[0], k), -1, dtype=np.int64)
    lik = np.zeros((m.shape[0], k), dtype=np.float32)
    idx[rows, slot] = m.indices[order]
    lik[rows, slot] = m.data[order]
    # NeMo-RL reads indices/likelihoods; the xtok_* entries let xtok restore row kinds exactly.
    return {"indices": torch.from_numpy(idx), "likelihoods": torch.from_numpy(lik),
            "xtok_metadata": json.dumps(metadata(proj), sort_keys=True),
            "xtok_kinds": torch.from_numpy(proj.kinds.astype(np.uint8)),
            "xtok_n_pieces": torch.from_numpy(proj.n_pieces.astype(np.int16)),
            "xtok_role_matched": torch.from_numpy(proj.role_matched.astype(np.bool_))}

def save_nemo(proj, path) -> Path:
    import torch

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_nemo(proj), str(path))
    return path

def load_nemo(cls, path, student, teacher):
    """Import a NeMo-RL top-k `.pt` (a plain tensor dict; pickled objects are refused)."""
    import pickle

    import torch

    s, t = load_tokenizer(student), load_tokenizer(teacher)
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise XtokError(f"{path} holds pickled Python objects, which xtok refuses to load; export it as a plain tensor dict "
                        f"(indices, likelihoods)") from None
    except Exception as e:  # noqa: BLE001
        raise XtokError(f"{path} is not a readable torch file ({type(e).__name__}); re-export it from NeMo-RL") from None
    if not isinstance(obj, dict) or "indices" not in obj or "likelihoods" not in obj:
        raise XtokError(f"{path} has no 'indices' and 'likelihoods' tensors; pass a NeMo-RL projection file")
    idx, lik = obj["indices"].numpy().astype(np.int64), obj["likelihoods"].float().numpy()
    V_s = idx.shape[0]
    V_t = t.vocab_size
    if isinstance(obj.get("xtok_metadata"), str):
        V_t = json.loads(obj["xtok_metadata"])["teacher"]["vocab_size"]
    if V_s < s.vocab_size:
        raise XtokError(f"{path} has {V_s:,} rows but student {s.name} has {s.vocab_size:,} ids; pass the student it was built for")
    keep = (idx >= 0) & (lik > 0)
    rows = np.repeat(np.arange(V_s), keep.sum(1))
    matrix = _assemble(rows, idx[keep], lik[keep].astype(np.float64), V_s, max(V_t, int(idx.max(initial=0)) + 1), idx.shape[1],
                       normalise=False)
    kinds = np.full(V_s, RETOKENIZED, dtype=np.uint8)
    kinds[s.vocab_size:] = PADDING
    kinds[: s.vocab_size][s.holes] = PADDING
    kinds[: s.vocab_size][s.special] = SPECIAL
    # a single weight-1 column that the exact-match pass would pick (the teacher's bytes index)
    single = np.diff(matrix.indptr) == 1
    top = np.where(single, matrix.indices[np.minimum(matrix.indptr[:-1], max(matrix.nnz - 1, 0))], -1)[: s.vocab_size]
    exact_col = t.ids_of_bytes(b"" if b is None else b for b in s.token_bytes)
    kinds[: s.vocab_size][single[: s.vocab_size] & (kinds[: s.vocab_size] == RETOKENIZED) & (top == exact_col)] = EXACT
    params = dict(max_pieces=idx.shape[1], top_k=idx.shape[1], base=0.9, decay=0.1, reverse_pass=False,
                  student_vocab_size=V_s, teacher_vocab_size=matrix.shape[1], imported_from="nemo-rl")
    n_pieces = np.where(kinds == EXACT, 1, np.diff(matrix.indptr)).astype(np.int16)
    role_matched = np.zeros(V_s, bool)
    if isinstance(obj.get("xtok_kinds"), torch.Tensor) and obj["xtok_kinds"].shape == (V_s,):
        kinds = obj["xtok_kinds"].numpy().astype(np.uint8)
        n_pieces = obj["xtok_n_pieces"].numpy().astype(np.int16)
        role_matched = obj["xtok_role_matched"].numpy().astype(bool)
        params.update(json.loads(obj["xtok_metadata"])["params"])
    return cls(matrix, kinds, n_pieces, role_matched,
               params=params, student_name=s.name, teacher_name=t.name, student_sha256=s.sha256, teacher_sha256=t.sha256,
               student=s, teacher=t)

def to_csv(proj, target=None) -> str | None:
    """One line per non-zero: student_id, student_text, kind, teacher_id, teacher_text, weight."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["student_id", "student_text", "kind", "teacher_id", "teacher_text", "weight"])
    m = proj.matrix
    rows = np.repeat(np.arange(m.shape[0]), np.diff(m.indptr))
    stext = (lambda i: proj.student.token_text(i) if i < proj.student.vocab_size else "") if proj.student else (lambda i: "")
    ttext = (lambda i: proj.teacher.token_text(i) if i < proj.teacher.vocab_size else "") if proj.teacher else (lambda i: "")
    names = proj.kind_names()
    w.writerows((int(r), stext(int(r)), names[r], int(c), ttext(int(c)), f"{v:.6g}")
                for r, c, v in zip(rows.tolist(), m.indices.tolist(), m.data.tolist()))
    if target is None:
        return buf.getvalue()
    if hasattr(target, "write"):
        target.write(buf.getvalue())
    else:
        Path(target).write_text(buf.getvalue(), encoding="utf-8")
    return None
