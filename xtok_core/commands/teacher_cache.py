"""`xtok teacher-cache`: run a teacher over the data once and store its top-K distributions."""

import dataclasses

ORDER = 46


def register(sub):
    from ..distill.config import DistillConfig

    run_default = {f.name: f.default for f in dataclasses.fields(DistillConfig)}  # the run's defaults
    p = sub.add_parser(
        "teacher-cache", help="run a teacher once over the data and store its top-K distributions for distillation",
        description="Run the teacher over every example of the data (batched, on GPU when there is one) and write, per "
                    "example, its token ids and, per position, its K most likely next tokens with their log-probabilities "
                    "and the log of the remaining mass, in safetensors shards with a manifest. Shards are written "
                    "atomically: rerun the same command after an interruption and it resumes. `xtok distill "
                    "--teacher-cache DIR` then trains from the cache without loading the teacher.",
        epilog="Example: xtok teacher-cache --teacher smollm2-135m-instruct --data data.txt --top-k 64 --out cache/smol "
               "(without --data: the generated corpus of a default run)")
    p.add_argument("--teacher", required=True, help="model spec: a named model (xtok models), tiny:<tokenizer>, a .gguf or a HF directory")
    p.add_argument("--data", default=None, help="data file as xtok distill --data reads it (.txt, .jsonl, .parquet, .csv), "
                                                "cut into the same training windows (default: every example of the "
                                                "generated corpus a run without --data trains on)")
    p.add_argument("--corpus-lines", type=int, default=run_default["corpus_lines"], help="without --data: the run's --corpus-lines")
    p.add_argument("--text-chars", type=int, default=run_default["text_chars"], help="without --data: the run's --text-chars")
    p.add_argument("--seed", type=int, default=run_default["seed"], help="without --data: the run's --seed (it seeds the generated corpus)")
    p.add_argument("--student", default=None, help="the student whose tokenizer cuts the windows (tiny:<tokenizer>, a tokenizer "
                                                   "or a model; default: the teacher's tokenizer)")
    p.add_argument("--seq-len", type=int, default=run_default["seq_len"], help="the run's --seq-len (windows of seq_len - 1 student tokens)")
    p.add_argument("--text-field", default=run_default["text_field"], help="the run's --text-field")
    p.add_argument("--heldout-fraction", type=float, default=run_default["heldout_fraction"], help="the run's --heldout-fraction (held-out documents are not cached)")
    p.add_argument("--top-k", type=int, default=64, help="teacher ids kept per position (default 64)")
    p.add_argument("--out", required=True, help="cache directory (resumed when it holds a partial build of the same arguments)")
    p.add_argument("--temperature", type=float, default=1.0, help="τ of the stored log-probabilities (the run must use the same)")
    p.add_argument("--max-length", type=int, default=512, help="teacher tokens kept per example (default 512)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=256, help="examples per shard (default 256)")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"], help="storage of the log-probabilities")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args):
    from ..teacher_cache import build_teacher_cache

    cache = build_teacher_cache(args.teacher, args.data, args.out, top_k=args.top_k, temperature=args.temperature,
                                max_length=args.max_length, batch_size=args.batch_size, shard_size=args.shard_size,
                                dtype=args.dtype, device=args.device, student=args.student, seq_len=args.seq_len,
                                text_field=args.text_field, heldout_fraction=args.heldout_fraction,
                                corpus_lines=args.corpus_lines, text_chars=args.text_chars, seed=args.seed,
                                show_progress=not args.no_progress)
    m = cache.manifest
    print(f"teacher cache {args.out}: {m['n_examples']} examples, {sum(s['tokens'] for s in m['shards'])} teacher "
          f"tokens, K = {m['top_k']}, {cache.bytes_per_token():.0f} bytes per token, {len(m['shards'])} shards")
    return 0
