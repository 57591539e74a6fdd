"""`xtok teacher`: train (or find in the cache) the tiny demo teacher for a bundled tokenizer."""

ORDER = 45


def register(sub):
    p = sub.add_parser(
        "teacher", help="train or reuse the tiny demo teacher for a tokenizer",
        description="Train a tiny Llama-style teacher on the generated corpus (arithmetic, prices, dates, code, prose) "
                    "and cache it under RUNS_DIR/teachers/ keyed by its settings; a second call reuses it. "
                    "Prints the model directory, which --teacher accepts.",
        epilog="Example: xtok teacher --tokenizer qwen2.5 && xtok distill --teacher tiny:qwen2.5 --out runs/pkl")
    p.add_argument("--tokenizer", default="qwen2.5", help="bundled tokenizer name (default qwen2.5)")
    p.add_argument("--steps", type=int, default=None, help="training steps (default: 300 on CPU, 2000 on GPU)")
    p.add_argument("--dim", type=int, default=None, help="hidden size (default 256)")
    p.add_argument("--layers", type=int, default=None, help="layers (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args):
    import json

    from ..distill.demo_teacher import TEACHER_DIM, TEACHER_LAYERS, default_teacher_steps, train_demo_teacher

    path = train_demo_teacher(args.tokenizer, steps=args.steps or default_teacher_steps(args.device), dim=args.dim or TEACHER_DIM,
                         layers=args.layers or TEACHER_LAYERS, seed=args.seed, runs_dir=args.runs_dir, device=args.device,
                         progress=not args.no_progress)
    record = path / "teacher.json"
    if not record.is_file():
        print(f"stopped before the end; run the same command again to continue training in {path}")
        return 3
    info = json.loads(record.read_text())
    acc = info.get("eval_accuracy")
    print(f"demo teacher for {args.tokenizer}: {path} (final loss {info.get('final_loss'):.3f}"
          f"{'' if acc is None else f', arithmetic accuracy {acc:.1%}'})")
    return 0
