"""The distillation loop: prepare once, then one training step read top to bottom.

    prepare(cfg)   models (load_model), the demo teacher if a tiny: teacher needs one (trained and cached
                   as its own run before this run's loop starts), W per teacher, `--loss auto` resolved

    texts  -> (on-policy: student samples, decoded)      data.py
           -> every tokenizer encodes the text, aligned   integrations.collator (align_batch)
           -> student logits, teacher logits (no grad)
           -> CE + λ·Σ α_m KD_m                           losses.DistillLoss
           -> backward, clip, AdamW step
           -> metrics line, eval, checkpoint              rundir.py / evaluate.py

Runs under `torchrun --nproc_per_node N` as DDP (gloo on CPU, NCCL on GPU): every rank reads its own
slice of each step's data, rank 0 owns the run directory.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist

from ..errors import XtokError
from ..integrations.collator import CrossTokenizerCollator, shares_tokenizer
from ..losses import host_stats
from .config import DistillConfig
from .chat_data import ChatBatches, chat_heldout_texts, chat_step, check_templates, is_chat_data
from .data import (TextBatches, decode_samples, pack_examples, read_documents, sample_continuations, split_heldout,
                   split_prompt, window_documents)
from .evaluate import arithmetic_accuracy, heldout_metrics
from ..models import LoadedModel, build_tiny, is_tiny, load_model, load_model_dir
from .objective import CrossEntropyOnly, build_objective, resolve_loss, run_projection
from .rundir import RunDir, gather_rng_states


@dataclass
class RunResult:
    run_dir: Path
    state: str                      # finished | stopped | failed
    step: int                       # steps completed
    metrics: list = field(default_factory=list)
    error: str | None = None
    student: "LoadedModel | None" = None

    @property
    def final_accuracy(self) -> float | None:
        acc = [m["eval_accuracy"] for m in self.metrics if "eval_accuracy" in m]
        return acc[-1] if acc else None


@dataclass
class RunHooks:
    """Test and integration points; none is needed for a normal run."""

    before_step: Callable | None = None   # f(step, state dict) before each step's forward pass


# ------------------------------------------------------------------------ setup
def _distributed(cfg: DistillConfig) -> tuple[int, int, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and cfg.device in ("auto", "cuda")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device(cfg.device if cfg.device not in ("auto", "cuda") else "cpu")


class RunStopped(Exception):
    """A Stop (SIGTERM) arrived while the run was being prepared: the run is marked stopped, not failed."""


@dataclass
class Prepared:
    """Everything a run resolves before its first step, once (SPEC §6): the models, the loss that
    `--loss auto` chose, and one W per teacher (None for a teacher with the student's tokenizer)."""

    student: LoadedModel
    teachers: list
    loss: str
    projections: list
    notes: list = field(default_factory=list)
    caches: list | None = None   # teacher caches (xtok teacher-cache) standing in for the teachers' forward passes
    train_texts: list | None = None   # --data: the training windows (None: the generated corpus)
    heldout_texts: list = field(default_factory=list)   # texts for held-out evaluation


HELDOUT_SEED_OFFSET = 1_000_003   # the generated corpus's held-out texts: another seed's corpus


def prepare(cfg: DistillConfig, *, log: Callable = print, documents: list | None = None) -> Prepared:
    """Resolve the run's models, W and loss. A tiny: teacher with `train_demo_teacher` is the cached
    demo teacher; when it is not cached yet it is trained here, as its own run in its own directory,
    before this run's loop (a Stop while it trains raises RunStopped; the next --resume continues it)."""
    student = _model(cfg.student, cfg, teacher=False, log=log)
    caches = _teacher_caches(cfg, student) if cfg.loss != "ce" else None
    if caches:
        teachers = [c.teacher() for c in caches]  # tokenizer and logit width only: no teacher model is loaded
    else:
        teachers = [_model(t, cfg, teacher=True, log=log) for t in cfg.teachers] if cfg.loss != "ce" else []
    files = cfg.projections or [None] * len(teachers)
    projections = [None if shares_tokenizer(student, t) else run_projection(student, t, files[i]) for i, t in enumerate(teachers)]
    loss_name, note = resolve_loss(cfg, student, teachers, projections[0] if projections else None)
    train, heldout = _texts(cfg, student, documents)
    return Prepared(student, teachers, loss_name, projections, [note] if note else [], caches, train, heldout)


def _texts(cfg: DistillConfig, student: LoadedModel, documents: list | None) -> tuple[list | None, list]:
    """(training windows or None for the generated corpus, held-out texts). --data documents are split by
    their hash, then windowed to the context (seq_len - 1 student tokens: room for bos)."""
    if is_chat_data(cfg.data):  # conversations train through chat_data; held out: their content as text
        return None, chat_heldout_texts(cfg.data, cfg.heldout_fraction, cfg.seed)[:cfg.eval_size]
    if cfg.data is None:
        from ..corpus import generate_corpus

        held = pack_examples(generate_corpus(cfg.eval_size * 4, cfg.seed + HELDOUT_SEED_OFFSET), cfg.text_chars)
        return None, held[:cfg.eval_size]
    docs = documents if documents is not None else read_documents(cfg.data, cfg.text_field)
    train, held = split_heldout(docs, cfg.heldout_fraction)
    budget = max(1, cfg.seq_len - 1)
    return window_documents(train, student.tok, budget), window_documents(held, student.tok, budget)[:cfg.eval_size]


def _model(spec: str, cfg: DistillConfig, *, teacher: bool, log: Callable = print) -> LoadedModel:
    if not is_tiny(spec):
        return load_model(spec, progress=log)
    if teacher and cfg.train_demo_teacher:
        from .demo_teacher import default_teacher_steps, train_demo_teacher

        name = spec[len("tiny:"):]
        path = train_demo_teacher(name, steps=cfg.teacher_steps or default_teacher_steps(cfg.device), runs_dir=cfg.runs_dir,
                             device=cfg.device, log=log)
        if not (path / "teacher.json").is_file():
            raise RunStopped(f"stopped while training the demo teacher for {name} in {path}")
        return load_model_dir(path, spec=spec)
    return build_tiny(spec, dim=cfg.tiny_dim, layers=cfg.tiny_layers, seed=cfg.seed)


def _lr_at(step: int, cfg: DistillConfig) -> float:
    """Linear warm-up, then cosine decay to lr/10."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _one_line(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if isinstance(e, XtokError) else f"{type(e).__name__}: {text[:300]}"


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.cuda.OutOfMemoryError) or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


class _StopFlag:
    """SIGTERM asks the loop to checkpoint and stop after the current step."""

    def __init__(self):
        self.set = False
        self._previous = None

    def install(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread (e.g. inside the app's worker): no signal handling
            self._previous = None

    def _handle(self, signum, frame):
        self.set = True

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


# ------------------------------------------------------------------------ the run
def run_distillation(config: DistillConfig, out: "str | Path", *, resume: bool = False, hooks: RunHooks | None = None,
                     progress: bool = True, log: Callable = print, prepared: Prepared | None = None) -> RunResult:
    """Train `config.student` against `config.teachers`, writing the run directory `out`.

    resume=True continues the run in `out` from its latest checkpoint (see `resume_distillation`, which
    reads the config back from the directory). `prepared` skips `prepare` (the caller resolved the models).
    Failures are recorded in status.json and re-raised (as XtokError with one line for out-of-memory);
    metrics and the last checkpoint stay. A Stop (SIGTERM) during preparation or training ends the run
    as "stopped".
    """
    cfg, hooks = config, hooks or RunHooks()
    rank, world, device = _distributed(cfg)
    main = rank == 0
    # user data is read and checked before the run directory exists: a bad file leaves nothing behind
    chat = is_chat_data(cfg.data)  # conversations (rows with messages): read by chat_data, checked there
    documents = read_documents(cfg.data, cfg.text_field) if cfg.data and not chat and not resume and prepared is None else None
    run = RunDir(out)
    if main and resume:
        run.write_config(cfg.to_dict())  # a resumed run may have a new step target
    elif main:
        run.create(cfg.to_dict())
    if world > 1:
        dist.barrier()
    step, result = 0, None
    stop = _StopFlag()
    stop.install()
    try:
        if main:
            run.write_status("running", step=0, steps=cfg.steps, phase="preparing")
        torch.manual_seed(cfg.seed + rank)
        # -- once, before the loop: models, W, loss -----------------------------------------------
        prep = prepared or prepare(cfg, log=log if main else (lambda *a, **k: None), documents=documents)
        if _agree(stop.set, world, device):
            raise RunStopped("stopped while preparing the run")
        student, teachers, caches = prep.student, prep.teachers, prep.caches
        for note in prep.notes:
            if main:
                log(note)
        student.model.to(device).train()
        for t in teachers:
            if t.model is not None:
                t.model.to(device).eval().requires_grad_(False)
        objective = build_objective(cfg, prep).to(device)
        model = torch.nn.parallel.DistributedDataParallel(student.model) if world > 1 else student.model
        groups = [{"params": [p for p in student.model.parameters() if p.requires_grad], "lr": cfg.lr, "base_lr": cfg.lr}]
        if list(objective.parameters()):
            groups.append({"params": list(objective.parameters()), "lr": cfg.w_lr, "base_lr": cfg.w_lr, "weight_decay": 0.0})
        optimizer = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.95))
        ckpt = run.latest_checkpoint() if resume else None
        if ckpt is not None:
            step = run.load_checkpoint(ckpt, student.model, optimizer, objective, rank=rank) + 1
            if main:
                run.truncate_metrics(step - 1)
        elif resume and main:
            run.truncate_metrics(-1)
        if chat:  # conversations: each model renders them with its own chat template
            if caches:
                raise XtokError("--teacher-cache stores teachers on plain text; conversations need each teacher on its "
                                "own rendering: drop --teacher-cache for chat --data")
            check_templates([student, *teachers], cfg.chat_template)
            batches = ChatBatches(cfg.data, cfg.batch_size, cfg.seed, rank, world, cfg.fixed_batch,
                                  heldout_fraction=cfg.heldout_fraction)
        else:
            batches = TextBatches(cfg.corpus_lines, cfg.text_chars, cfg.batch_size, cfg.seed, rank, world, cfg.fixed_batch,
                                  examples=prep.train_texts)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
        n_on_policy = round(cfg.on_policy_ratio * cfg.batch_size)
        collator = CrossTokenizerCollator(student, teachers, max_length=cfg.seq_len)
        t_start, last_saved = time.time(), step - 1
        t_log, steps_since_log = time.time(), 0
        bar = _progress(progress and main, step, cfg.steps)
        if main:
            run.write_status("running", step=step, steps=cfg.steps)

        while step < cfg.steps:
            if hooks.before_step:
                hooks.before_step(step, {"student": student, "teachers": teachers, "objective": objective,
                                         "optimizer": optimizer, "device": device})
            lr_scale = _lr_at(step, cfg) / cfg.lr
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * lr_scale
            # -- 1. the text of this step: corpus, with some rows replaced by student samples --
            if chat:  # conversations: the same steps 1-2, with templates, loss masks and student-written turns
                cs = chat_step(batches, step, student, teachers, same_tokenizer=shares_tokenizer, n_on_policy=n_on_policy,
                               max_length=cfg.seq_len, loss_on=cfg.loss_on, chat_template=cfg.chat_template,
                               max_new_tokens=cfg.max_new_tokens, temperature=cfg.sample_temperature, device=device,
                               autocast=autocast)
                alignments, s_ids, s_mask, labels, texts = cs.alignments, cs.student_ids, cs.student_mask, cs.labels, cs.rows
            else:
                texts = batches(step)
                if n_on_policy:
                    prompts = [split_prompt(t) for t in texts[:n_on_policy]]
                    with autocast:
                        cont = sample_continuations(student.model, student.tok, prompts, max_new_tokens=cfg.max_new_tokens,
                                                    temperature=cfg.sample_temperature, max_length=cfg.seq_len, device=device)
                    texts[:n_on_policy] = decode_samples(student.tok, prompts, cont)
                # -- 2. every tokenizer encodes the same text; other tokenizers are aligned to the student --
                # (the collator the Hugging Face Trainer uses; CE only on corpus rows: the student's own samples
                # are not targets to imitate)
                batch = collator.encode(texts, ce_rows=torch.arange(len(texts)) >= n_on_policy)
                alignments = [a if a is None else a.to(device) for a in CrossTokenizerCollator.alignments(batch)]
                s_ids, s_mask = batch["input_ids"].to(device), batch["attention_mask"].bool().to(device)
                labels = batch["labels"].to(device)
            # -- 3. forward passes (teachers without grad) --
            with autocast:
                s_logits = model(input_ids=s_ids, attention_mask=s_mask.long()).logits
                with torch.no_grad():
                    t_logits = ([c.distribution(texts, a.teacher_ids if a is not None else s_ids,
                                                a.teacher_mask if a is not None else s_mask) for c, a in zip(caches, alignments)]
                                if caches else
                                [t.model(input_ids=a.teacher_ids if a is not None else s_ids,
                                         attention_mask=(a.teacher_mask if a is not None else s_mask).long()).logits
                                 for t, a in zip(teachers, alignments)])
            # -- 4. loss: CE + λ·Σ α_m KD_m, in fp32 --
            loss, stats = objective(s_logits.float(), [z.float() if torch.is_tensor(z) else z for z in t_logits], alignments,
                                    input_ids=s_ids, attention_mask=s_mask, labels=labels)
            # -- 5. update --
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            _sync_objective_grads(objective, world)
            grad_norm = torch.nn.utils.clip_grad_norm_(student.model.parameters(), cfg.grad_clip)
            optimizer.step()
            # -- 6. bookkeeping: values stay tensors on the device; they are read (a host sync) only on
            # logging steps, as nanoGPT does --
            steps_since_log += 1
            evaluating = bool(cfg.eval_every) and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps)
            logging = (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps or evaluating
            if logging and main:
                if device.type == "cuda":
                    torch.cuda.synchronize()  # step_time measures the work, not the kernel launches
                dt = (time.time() - t_log) / steps_since_log
                n_tokens = int(s_mask.sum()) * world
                row = {"step": step, "lr": _lr_at(step, cfg), "tokens": n_tokens, "tokens_per_s": n_tokens / max(dt, 1e-9),
                       "step_time": dt, "wall_time": time.time(), "elapsed": time.time() - t_start,
                       "on_policy": n_on_policy / len(texts),
                       **host_stats({"loss": loss.detach(), "grad_norm": grad_norm, **stats})}  # one host sync
                if evaluating:
                    row.update(heldout_metrics(student, teachers, prep.projections, prep.heldout_texts, seq_len=cfg.seq_len,
                                               batch_size=cfg.batch_size, device=device, autocast=autocast))
                    if cfg.data is None:  # the generated corpus's arithmetic: greedy exact match
                        with autocast:
                            ev = arithmetic_accuracy(student.model, student.tok, n=cfg.eval_size, device=device)
                        row["eval_accuracy"] = ev["accuracy"]
                run.append_metrics(row)
                t_log, steps_since_log = time.time(), 0
            stopping = _agree(stop.set, world, device)
            step += 1
            if main:
                run.write_status("running", step=step, steps=cfg.steps)
                if bar:
                    bar.update(1)
                    if logging:
                        bar.set_postfix(loss=f"{row['loss']:.3f}")
            if step % cfg.checkpoint_every == 0 or step == cfg.steps or stopping:
                rng = gather_rng_states(world, device) if world > 1 else None  # every rank's sampler
                if main:
                    run.save_checkpoint(step - 1, student.model, optimizer, objective, keep=cfg.keep_checkpoints, rng=rng)
                last_saved = step - 1
            if stopping:
                break

        state = "finished" if step >= cfg.steps else "stopped"
        if main:
            if bar:
                bar.close()
            run.write_status(state, step=step, steps=cfg.steps, checkpoint=f"step-{last_saved}" if last_saved >= 0 else None)
        _record_replica(run, rank, step, student.model)
        result = RunResult(run.path, state, step, run.read_metrics() if main else [], None, student)
    except RunStopped as e:
        if main:
            kept = run.latest_checkpoint()
            run.write_status("stopped", step=step, steps=cfg.steps, checkpoint=kept.name if kept else None,
                             error=f"{e}; continue with xtok distill --resume {run.path}")
        result = RunResult(run.path, "stopped", step, run.read_metrics() if main else [], None, None)
    except BaseException as e:  # noqa: BLE001 - every failure is recorded before it propagates
        msg = _one_line(e)
        if _is_oom(e):
            msg = (f"out of memory at step {step} (batch {cfg.batch_size} x {cfg.seq_len} tokens); lower --batch-size or "
                   f"--seq-len and continue with xtok distill --resume {run.path}")
        if isinstance(e, KeyboardInterrupt):
            msg = "interrupted; continue with xtok distill --resume " + str(run.path)
        if main:
            kept = run.latest_checkpoint()
            run.write_status("failed" if not isinstance(e, KeyboardInterrupt) else "stopped", step=step, steps=cfg.steps,
                             error=msg, checkpoint=kept.name if kept else None)
        if isinstance(e, (XtokError, KeyboardInterrupt)):
            raise
        if _is_oom(e):
            raise XtokError(msg) from None
        raise
    finally:
        run.close()
        stop.uninstall()
    return result


def resume_distillation(run_dir: "str | Path", *, steps: int | None = None, **kwargs) -> RunResult:
    """Continue the run in `run_dir` from its latest checkpoint (optionally to a new step count)."""
    run = RunDir(run_dir)
    cfg = DistillConfig.from_dict(run.read_config())
    if steps is not None and steps != cfg.steps:
        cfg = cfg.replace(steps=steps)
    return run_distillation(cfg, run_dir, resume=True, **kwargs)


# ------------------------------------------------------------------------ pieces of a step
def _teacher_caches(cfg: DistillConfig, student: LoadedModel):
    """The run's teacher caches, checked against it (one line for what differs), or None."""
    if not cfg.teacher_caches:
        return None
    from ..teacher_cache import TeacherCache, sha256_file

    if cfg.position == "chunk_mean":
        raise XtokError("position 'chunk_mean' averages the teacher's full distributions over a group, which a teacher "
                        "cache does not store; use --position boundary or chain with --teacher-cache")
    caches = [TeacherCache.open(d) for d in cfg.teacher_caches]
    if cfg.data is None:  # the generated corpus: the same corpus settings
        data = dict(corpus={"corpus_lines": cfg.corpus_lines, "text_chars": cfg.text_chars, "seed": cfg.seed})
    else:
        data = dict(data_sha256=sha256_file(cfg.data), student_tokenizer=student.tok, seq_len=cfg.seq_len,
                    heldout_fraction=cfg.heldout_fraction, text_field=cfg.text_field)
    for c in caches:
        c.check(temperature=cfg.temperature, max_length=cfg.seq_len, **data)
    return caches


def _sync_objective_grads(objective: torch.nn.Module, world: int) -> None:
    """DDP averages the student's gradients; a learned W lives outside it and is averaged here."""
    if world > 1:
        for p in objective.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad /= world


def _agree(flag: bool, world: int, device: torch.device) -> bool:
    """All ranks stop at the same step when any of them got SIGTERM."""
    if world == 1:
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def _record_replica(run: RunDir, rank: int, step: int, model: torch.nn.Module) -> None:
    """replicas/rank-N.json: each rank's final step and weight fingerprint, so a DDP run can show that
    its replicas stayed identical."""
    with torch.no_grad():
        fp = sum(float(p.double().square().sum()) for p in model.parameters())
    (run.path / "replicas").mkdir(exist_ok=True)
    (run.path / "replicas" / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "step": step, "fingerprint": fp}))


def _progress(enabled: bool, start: int, total: int):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=start, desc="distill", unit="step", dynamic_ncols=True)
