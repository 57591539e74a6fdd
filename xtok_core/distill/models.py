"""Models for a run: a tiny Llama-style model sized to a bundled tokenizer, or a local HF directory.

`tiny:<bundled tokenizer>` builds a fresh `LlamaForCausalLM` whose vocabulary is exactly the
tokenizer's (so W needs no padding rows). Embeddings are tied: with a 128k-151k vocabulary they
would otherwise dwarf the few million parameters of the transformer body.
A local directory is loaded with `trust_remote_code=False` and its own tokenizer files.
"""

from __future__ import annotations

import gzip
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import XtokError
from ..tok import ASSETS, Tok, load_tokenizer

TINY_PREFIX = "tiny:"


@dataclass
class LoadedModel:
    """A causal LM with the tokenizer that produced its ids."""

    spec: str
    model: torch.nn.Module
    tok: Tok

    @property
    def vocab_size(self) -> int:
        """Width of the logits (may exceed `tok.vocab_size` when the model pads its vocabulary)."""
        return int(self.model.get_output_embeddings().weight.shape[0])


def is_tiny(spec: str) -> bool:
    return str(spec).startswith(TINY_PREFIX)


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


def pad_id(tok: Tok) -> int:
    """The id used for right/left padding: the tokenizer's pad, else eos, else 0 (always masked)."""
    return int(tok.roles.get("pad", tok.roles.get("eos", 0)))


def build_tiny(spec: str, *, dim: int = 192, layers: int = 6, seed: int = 0) -> LoadedModel:
    from transformers import LlamaForCausalLM

    tok = load_tokenizer(spec[len(TINY_PREFIX):])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(tiny_config(tok, dim, layers))
    return LoadedModel(spec, model, tok)


def load_model_dir(path: "str | Path") -> LoadedModel:
    """A local Hugging Face causal-LM directory (config.json + weights + tokenizer files)."""
    p = Path(path).expanduser()
    if not p.is_dir():
        raise XtokError(f"model {str(path)!r} is neither tiny:<tokenizer> nor an existing directory; pass a local Hugging Face model directory")
    if not (p / "config.json").is_file():
        raise XtokError(f"model directory {p} has no config.json; pass a directory saved with save_pretrained() or use tiny:<tokenizer>")
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(p), trust_remote_code=False, local_files_only=True)
    except Exception as e:  # noqa: BLE001 - transformers raises many types for one user problem
        first = (str(e).splitlines() or [type(e).__name__])[0][:160]
        raise XtokError(f"cannot load a causal LM from {p} ({first}); check the directory or use tiny:<tokenizer>") from None
    return LoadedModel(str(p), model, load_tokenizer(p))


def non_embedding_params(model: torch.nn.Module) -> int:
    emb = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in emb)


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
