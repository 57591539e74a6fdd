"""`xtok align`: show how one text's student and teacher tokens align into span groups."""

ORDER = 40


def register(sub):
    p = sub.add_parser("align", help="align the student's and the teacher's tokens of a text into span groups",
                       description="Tokenize a text with both tokenizers and print both tokenizations and the "
                                   "alignment groups (tokens whose byte spans overlap), with visible whitespace "
                                   "(· space, ⇥ tab, ↵ newline) and partial UTF-8 bytes as \\xNN.")
    p.add_argument("--student", default=None, help="student tokenizer (default: llama-3.2)")
    p.add_argument("--teacher", default=None, help="teacher tokenizer (default: qwen2.5)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to align")
    src.add_argument("--file", help="read the text from this UTF-8 file")
    p.add_argument("--special", action="store_true", help="add the tokenizers' special tokens (bos/eos) as a model sees them")
    p.set_defaults(func=run)


def run(args):
    from ..align import align_spans, format_alignment
    from ..errors import XtokError
    from ..tok import DEFAULT_STUDENT, DEFAULT_TEACHER

    text = args.text
    if args.file is not None:
        try:
            with open(args.file, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise XtokError(f"cannot read {args.file} as UTF-8 text ({type(e).__name__}); pass a UTF-8 file or use --text") from None
    alignment = align_spans(text, args.student or DEFAULT_STUDENT, args.teacher or DEFAULT_TEACHER,
                            add_special_tokens=args.special)
    print(format_alignment(alignment))
    return 0
