"""`xtok audit`: coverage of critical student tokens in the teacher, and the P-KL / H-KL recommendation."""

ORDER = 20
FORMATS = {"md": ".md", "html": ".html", "json": ".json"}


def register(sub):
    p = sub.add_parser(
        "audit", help="audit critical-token coverage (numerals, prices, dates, code) and recommend P-KL or H-KL",
        description="Count, per category of critical student tokens (multi-digit numerals, numerals with separators, "
                    "currency, dates/times, code, math, whitespace), how many the teacher has exactly, weight them by "
                    "a corpus, and recommend P-KL when a critical category falls below the threshold, else H-KL. "
                    "Writes Markdown, a self-contained HTML page or JSON.",
        epilog="Example: xtok audit --student llama-3.2 --teacher qwen2.5 --format html --out audit.html")
    p.add_argument("--student", default=None, help="student tokenizer (default: the one --w names, else llama-3.2)")
    p.add_argument("--teacher", default=None, help="teacher tokenizer (default: the one --w names, else qwen2.5)")
    p.add_argument("--w", help="a W file from xtok build-w (default: build W in memory, about a second)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--corpus", help="UTF-8 text file for frequency-weighted coverage (default: the bundled sample corpus)")
    g.add_argument("--no-corpus", action="store_true", help="vocabulary coverage only")
    p.add_argument("--threshold", type=float, default=0.9, help="P-KL when a critical category's coverage is below this (default 0.9)")
    p.add_argument("--format", choices=sorted(FORMATS), help="report format (default: from --out's extension, else md)")
    p.add_argument("--out", help="output file (default: print to stdout)")
    p.add_argument("--max-rows", type=int, default=100, help="unmatched tokens listed per category in md/html (default 100; 0 = all)")
    p.set_defaults(func=run)


def _read_corpus(path: str) -> str:
    from ..errors import XtokError

    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise XtokError(f"cannot read corpus {path} ({e.strerror or e}); pass an existing UTF-8 text file") from None
    except UnicodeDecodeError:
        raise XtokError(f"corpus {path} is not UTF-8 text; convert it (iconv -t utf-8) or pass another file") from None


def run(args):
    import sys
    from pathlib import Path

    from ..audit import coverage_audit
    from ..errors import XtokError
    from ..projection import Projection
    from ..tok import DEFAULT_STUDENT, DEFAULT_TEACHER

    fmt = args.format
    if fmt is None:
        suffix = Path(args.out).suffix.lower() if args.out else ""
        fmt = next((k for k, v in FORMATS.items() if v == suffix or (k == "html" and suffix == ".htm")), "md")
    projection = None
    student, teacher = args.student, args.teacher
    if args.w:
        projection = Projection.load(args.w)
        student, teacher = student or projection.student_name, teacher or projection.teacher_name
    student, teacher = student or DEFAULT_STUDENT, teacher or DEFAULT_TEACHER

    if args.no_corpus:
        corpus, name = None, None
    elif args.corpus:
        corpus, name = _read_corpus(args.corpus), Path(args.corpus).name
    else:
        from ..corpus import sample_corpus

        corpus, name = sample_corpus(), "bundled sample corpus"
    if args.max_rows < 0:
        raise XtokError(f"--max-rows {args.max_rows} is negative; pass 0 for all rows or a positive count")
    report = coverage_audit(student, teacher, projection, threshold=args.threshold, corpus=corpus, corpus_name=name)
    max_rows = args.max_rows or None
    text = {"md": lambda: report.to_markdown(max_rows), "html": lambda: report.to_html(max_rows), "json": report.to_json}[fmt]()
    if args.out:
        out = Path(args.out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text, encoding="utf-8")
        except OSError as e:
            raise XtokError(f"cannot write {out} ({e.strerror or e}); pass a writable --out path") from None
        print(f"{report.recommendation} for {report.student.name} -> {report.teacher.name}; wrote {fmt} report to {out}",
              file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
