"""`xtok build-w`: build the projection matrix W and save it as safetensors (or NeMo-RL .pt)."""

ORDER = 10


def register(sub):
    p = sub.add_parser(
        "build-w", help="build the projection matrix W (student rows x teacher columns)",
        description="Build the X-Token projection matrix W: exact byte matches get weight 1, the other student tokens "
                    "are re-tokenized by the teacher and weighted 0.9*0.1^i over their first pieces; special tokens "
                    "map by role. Saves safetensors (default) or NeMo-RL's top-k .pt when --out ends in .pt.",
        epilog="Example: xtok build-w --student llama-3.2 --teacher qwen2.5 --out W.safetensors "
               "--teacher-vocab-size 151936")
    p.add_argument("--student", default="llama-3.2", help="student tokenizer: bundled name, tokenizer.json, HF dir or hub id (default: llama-3.2)")
    p.add_argument("--teacher", default="qwen2.5", help="teacher tokenizer (default: qwen2.5)")
    p.add_argument("--out", required=True, help="output file: .safetensors, or .pt for NeMo-RL's top-k format")
    p.add_argument("--max-pieces", type=int, default=4, help="teacher pieces kept per re-tokenized row (default 4)")
    p.add_argument("--top-k", type=int, default=4, help="non-zeros kept per row (default 4)")
    p.add_argument("--base", type=float, default=0.9, help="weight of the first piece (default 0.9)")
    p.add_argument("--decay", type=float, default=0.1, help="weight ratio between consecutive pieces (default 0.1)")
    p.add_argument("--student-vocab-size", type=int, help="student model's logits width, if padded past the tokenizer")
    p.add_argument("--teacher-vocab-size", type=int, help="teacher model's logits width (Qwen2.5: 151936)")
    p.add_argument("--reverse-pass", action="store_true", help="also add teacher->student re-tokenization (NeMo-RL parity; off by default)")
    p.set_defaults(func=run)


def run(args):
    import time

    from tqdm import tqdm

    from ..projection import build_projection

    bar = tqdm(total=100, desc="build W", unit="%", leave=False, disable=None)

    def progress(frac, msg):
        bar.set_description(msg[:60])
        bar.update(int(frac * 100) - bar.n)

    t0 = time.perf_counter()
    proj = build_projection(args.student, args.teacher, max_pieces=args.max_pieces, top_k=args.top_k, base=args.base,
                            decay=args.decay, progress=progress, student_vocab_size=args.student_vocab_size,
                            teacher_vocab_size=args.teacher_vocab_size, reverse_pass=args.reverse_pass)
    bar.close()
    if str(args.out).endswith(".pt"):
        proj.save_nemo(args.out)
    else:
        proj.save(args.out)
    counts = ", ".join(f"{k} {v:,}" for k, v in proj.kind_counts().items() if v)
    print(f"W {proj.shape[0]:,} x {proj.shape[1]:,} ({proj.student_name} -> {proj.teacher_name}), {proj.matrix.nnz:,} non-zeros, "
          f"built in {time.perf_counter() - t0:.2f}s; rows: {counts}")
    print(f"saved {args.out} (sha256 {proj.sha256[:12]})")
    return 0
