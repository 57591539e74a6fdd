"""`xtok explain`: print one row of W with its teacher pieces, bytes, weights and the formula."""

ORDER = 11


def register(sub):
    p = sub.add_parser(
        "explain", help="explain a row of W: which pass made it, teacher pieces, bytes, weights, formula",
        description="Show why a student token maps to the teacher tokens it does. Give the token as text (--token 2024, "
                    "encoded with the student tokenizer; it must be a single student token unless --all) or as an id (--id).",
        epilog="Example: xtok explain --w W.safetensors --token ' 2024'")
    p.add_argument("--w", help="a W file from xtok build-w (default: build W for --student/--teacher in memory)")
    p.add_argument("--student", default=None, help="student tokenizer (default: the one W names, if bundled; else llama-3.2)")
    p.add_argument("--teacher", default=None, help="teacher tokenizer (default: the one W names, if bundled; else qwen2.5)")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--token", help="token text; explained token by token if the student splits it")
    g.add_argument("--id", type=int, help="student token id")
    p.set_defaults(func=run)


def run(args):
    from ..errors import XtokError
    from ..projection import Projection, build_projection
    from ..tok import bundled_tokenizers

    if args.w:
        from safetensors import safe_open
        import json

        try:
            with safe_open(args.w, framework="numpy") as f:
                meta = json.loads((f.metadata() or {}).get("xtok", "{}"))
        except Exception:  # noqa: BLE001 - Projection.load gives the one-line error below
            meta = {}
        names = bundled_tokenizers()
        student = args.student or (meta.get("student", {}).get("name") if meta.get("student", {}).get("name") in names else None)
        teacher = args.teacher or (meta.get("teacher", {}).get("name") if meta.get("teacher", {}).get("name") in names else None)
        proj = Projection.load(args.w, student=student, teacher=teacher)
    else:
        proj = build_projection(args.student or "llama-3.2", args.teacher or "qwen2.5")
    if args.id is not None:
        ids = [args.id]
    else:
        if proj.student is None:
            raise XtokError("--token needs the student tokenizer; pass --student with the tokenizer W was built for")
        ids = proj.student.encode(args.token, dummy_prefix=False).ids.tolist()
        if len(ids) > 1:
            print(f"{args.token!r} is {len(ids)} student tokens; explaining each")
    for i in ids:
        print(proj.explain(int(i)).to_text())
    return 0
