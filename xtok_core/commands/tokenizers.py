"""`xtok tokenizers`: list the bundled tokenizers, or describe one."""

ORDER = 0


def register(sub):
    p = sub.add_parser("tokenizers", help="list bundled tokenizers or describe one",
                       description="List the bundled tokenizers with family and vocabulary size, or show one in detail.")
    p.add_argument("name", nargs="?", help="a bundled name, tokenizer.json path or local HF directory")
    p.set_defaults(func=run)


def run(args):
    from ..tok import bundled_tokenizers, load_tokenizer, DEFAULT_STUDENT, DEFAULT_TEACHER

    names = [args.name] if args.name else bundled_tokenizers()
    for n in names:
        t = load_tokenizer(n)
        mark = " (default student)" if t.name == DEFAULT_STUDENT else " (default teacher)" if t.name == DEFAULT_TEACHER else ""
        roles = ", ".join(f"{r}={t.token_text(i)!r}" for r, i in t.roles.items())
        print(f"{t.name:12s} {t.family:22s} vocab {t.vocab_size:>7,d}  sha256 {t.sha256[:12]}  {roles}{mark}")
    return 0
