"""Regenerate the bundled `bert-wordpiece` tokenizer.

None of the public tokenizers bundled with xtok is a WordPiece one, so xtok trains a small BERT-style
WordPiece tokenizer (lower-casing, accent-stripping BertNormalizer, BertPreTokenizer, `##` pieces,
[CLS]/[SEP]) on its own generated corpus. It exercises the WordPiece adapter and alignment through a
normalising tokenizer; it is not a model's tokenizer.

    python scripts/make_wordpiece_tokenizer.py
"""

import gzip
import json
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from xtok_core.corpus import generate_corpus, sample_corpus

OUT = Path(__file__).resolve().parents[1] / "xtok_core" / "assets" / "tokenizers" / "bert-wordpiece"
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def main():
    tk = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=100))
    tk.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tk.decoder = decoders.WordPiece(prefix="##")
    text = [sample_corpus()] + generate_corpus(4000, seed=7) + [
        "Café, naïve, façade: accents are stripped. 日本語 and 中文 split per character. Ünïcödé ÄÖÜ ß.",
        "Emoji 😀 and symbols € £ ¥ ± × ÷ ≤ ≥ √ are kept when seen.",
    ]
    trainer = trainers.WordPieceTrainer(vocab_size=6000, min_frequency=1, special_tokens=SPECIALS, show_progress=False)
    tk.train_from_iterator(text, trainer=trainer)
    cls, sep = tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]")
    tk.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                      special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    OUT.mkdir(parents=True, exist_ok=True)
    raw = tk.to_str().encode("utf-8")
    with open(OUT / "tokenizer.json.gz", "wb") as f, gzip.GzipFile(fileobj=f, mode="wb", compresslevel=9, mtime=0, filename="") as g:
        g.write(raw)
    config = {"tokenizer_class": "BertTokenizerFast", "do_lower_case": True, "unk_token": "[UNK]", "pad_token": "[PAD]",
              "cls_token": "[CLS]", "sep_token": "[SEP]", "mask_token": "[MASK]", "bos_token": "[CLS]", "eos_token": "[SEP]",
              "model_max_length": 512}
    (OUT / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    print(f"wrote {OUT} ({tk.get_vocab_size()} tokens)")


if __name__ == "__main__":
    main()
