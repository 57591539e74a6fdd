"""`xtok export`: convert W between xtok safetensors, NeMo-RL's top-k .pt and CSV, or a run's metrics to CSV."""

ORDER = 40
FORMATS = ("safetensors", "nemo", "csv")


def register(sub):
    p = sub.add_parser(
        "export", help="convert W (safetensors <-> NeMo-RL .pt, CSV) or a run's metrics (CSV)",
        description="Convert a projection matrix W between formats so a W from either tool runs in the other, or "
                    "write a run's metrics.jsonl as CSV. A NeMo-RL .pt is read with torch.load(weights_only=True): "
                    "files holding pickled Python objects are refused.",
        epilog="Examples: xtok export --w W.safetensors --format nemo --out W.pt; "
               "xtok export --w W.pt --student llama-3.2 --teacher qwen2.5 --format safetensors --out W.safetensors; "
               "xtok export --run runs/pkl --out metrics.csv")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--w", help="a W file: xtok .safetensors or NeMo-RL .pt")
    src.add_argument("--run", help="a run directory from xtok distill (exports metrics.jsonl as CSV)")
    p.add_argument("--student", help="student tokenizer (required to import a NeMo-RL .pt; checked against a .safetensors)")
    p.add_argument("--teacher", help="teacher tokenizer (as --student)")
    p.add_argument("--format", choices=FORMATS, help="output format (default: from --out's extension)")
    p.add_argument("--out", required=True, help="output file")
    p.set_defaults(func=run)


def _format(args) -> str:
    from ..errors import XtokError

    if args.format:
        return args.format
    for ext, fmt in ((".safetensors", "safetensors"), (".pt", "nemo"), (".csv", "csv")):
        if str(args.out).endswith(ext):
            return fmt
    raise XtokError(f"cannot tell the format from {args.out}; pass --format {'|'.join(FORMATS)} or use .safetensors/.pt/.csv")


def run(args):
    import csv
    from pathlib import Path

    from ..errors import XtokError

    if args.run:
        from ..distill.rundir import RunDir

        rows = RunDir(args.run).read_metrics() if Path(args.run, "metrics.jsonl").is_file() else None
        if rows is None:
            raise XtokError(f"{args.run} has no metrics.jsonl; pass a run directory written by xtok distill")
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "step", k))
        with open(args.out, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(rows)
        print(f"wrote {len(rows)} metric rows to {args.out}")
        return 0

    from ..projection import Projection

    if str(args.w).endswith(".pt"):
        if not (args.student and args.teacher):
            raise XtokError("importing a NeMo-RL .pt needs --student and --teacher (it does not record its tokenizers)")
        proj = Projection.load_nemo(args.w, args.student, args.teacher)
    else:
        proj = Projection.load(args.w, student=args.student, teacher=args.teacher)
    fmt = _format(args)
    if fmt == "safetensors":
        proj.save(args.out)
    elif fmt == "nemo":
        proj.save_nemo(args.out)
    else:
        proj.to_csv(args.out)
    print(f"wrote W {proj.shape[0]:,} x {proj.shape[1]:,} ({proj.matrix.nnz:,} non-zeros) as {fmt} to {args.out}")
    return 0
