"""`xtok distill`: a distillation run into a run directory (or `--resume RUN_DIR`)."""

ORDER = 50


def register(sub):
    p = sub.add_parser(
        "distill", help="distill a student from one or more teachers into a run directory",
        description="Train a student against teachers with other tokenizers (X-Token P-KL/H-KL, GOLD, ULD, or CE only). "
                    "Models are tiny:<bundled tokenizer> (a tiny Llama; a tiny teacher is the cached demo teacher) or "
                    "local Hugging Face directories. The run directory holds config.json, metrics.jsonl, status.json "
                    "and checkpoints/; under torchrun --nproc_per_node N the same command runs DDP.",
        epilog="Example: xtok distill --student tiny:llama-3.2 --teacher tiny:qwen2.5 --loss pkl --steps 300 --out runs/pkl")
    p.add_argument("--student", default="tiny:llama-3.2", help="tiny:<tokenizer> or a local HF model directory")
    p.add_argument("--teacher", action="append", dest="teachers", help="tiny:<tokenizer> or a local HF model directory (repeat for several)")
    p.add_argument("--alpha", action="append", type=float, dest="alphas", help="weight of each teacher's KD term (one per --teacher)")
    p.add_argument("--w", action="append", dest="projections", help="W file per teacher (xtok build-w); default: built from the tokenizers")
    p.add_argument("--loss", default="pkl", choices=["pkl", "hkl", "gold", "gold-trl", "uld", "ce", "auto"],
                   help="KD loss; auto takes the coverage audit's recommendation (default pkl)")
    p.add_argument("--position", default="boundary", choices=["boundary", "chunk_mean", "chain"])
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--kd-weight", type=float, default=None, help="fixed λ (default: dynamic λ = CE/KD)")
    p.add_argument("--learnable-w", action="store_true", help="train W's non-zero values (P-KL)")
    p.add_argument("--on-policy-ratio", type=float, default=0.0, help="fraction of each batch sampled by the student")
    p.add_argument("--max-new-tokens", type=int, default=24, help="length of on-policy samples")
    p.add_argument("--steps", type=int, default=None, help="training steps (default 300; with --resume: the run's own)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=96)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval-every", type=int, default=50, help="arithmetic exact-match evaluation every N steps (0: never)")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--tiny-dim", type=int, default=192, help="hidden size of a tiny: student")
    p.add_argument("--tiny-layers", type=int, default=6, help="layers of a tiny: student")
    p.add_argument("--teacher-steps", type=int, default=None, help="steps to train a missing demo teacher (default: 300 on CPU, 2000 on GPU)")
    p.add_argument("--random-teacher", action="store_true", help="use a randomly initialised tiny: teacher (for smoke tests)")
    p.add_argument("--runs-dir", default="runs", help="where demo teachers are cached (default ./runs)")
    p.add_argument("--fixed-batch", action="store_true", help="train on one batch (an overfit check)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", help="new run directory")
    where.add_argument("--resume", metavar="RUN_DIR",
                       help="continue a run from its latest checkpoint with its own config.json (only --steps may change it)")
    p.set_defaults(func=run)


def run(args):
    from ..distill import DistillConfig, resume_distillation, run_distillation

    if args.resume:
        result = resume_distillation(args.resume, steps=args.steps, progress=not args.no_progress)
    else:
        from ..distill.teacher import default_teacher_steps

        cfg = DistillConfig(
            student=args.student, teachers=args.teachers or ([] if args.loss == "ce" else ["tiny:qwen2.5"]),
            alphas=args.alphas, projections=args.projections, loss=args.loss, position=args.position,
            temperature=args.temperature, kd_weight=args.kd_weight, learnable_w=args.learnable_w,
            on_policy_ratio=args.on_policy_ratio, max_new_tokens=args.max_new_tokens, steps=args.steps or 300,
            batch_size=args.batch_size, seq_len=args.seq_len, lr=args.lr, seed=args.seed, eval_every=args.eval_every,
            checkpoint_every=args.checkpoint_every, device=args.device, tiny_dim=args.tiny_dim, tiny_layers=args.tiny_layers,
            train_demo_teacher=not args.random_teacher, teacher_steps=args.teacher_steps or default_teacher_steps(args.device),
            runs_dir=args.runs_dir, fixed_batch=args.fixed_batch)
        result = run_distillation(cfg, args.out, progress=not args.no_progress)
    if result.metrics:
        last = result.metrics[-1]
        acc = "" if result.final_accuracy is None else f", arithmetic accuracy {result.final_accuracy:.1%}"
        print(f"{result.state} at step {result.step}: loss {last['loss']:.4f}{acc}; run directory {result.run_dir}")
    return 0 if result.state == "finished" else 3
