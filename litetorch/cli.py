"""`litetorch` command line: generate | chat | info | trace | stats | exercises | bench.

    litetorch generate "What is the capital of France?"      # default model, chat template applied
    litetorch chat --system "You are a pirate."              # /reset /system TEXT /stats /exit
    litetorch info PATH                                      # metadata and tensor table of a GGUF
    litetorch trace --prompt "Hello" --out trace.npz         # every named intermediate, for ports
    litetorch trace --ids 1,2,3 --model DIR --out trace.npz  # exact token ids (no tokenizer needed)
    litetorch stats [PATH] [--full] [--names GLOB ...] [--json]   # weight statistics
    litetorch exercises list | start DIR | check N [--dir DIR]     # the course's exercises

Errors in the input (an empty prompt, a bad option value, a full context) print one line
`error: <LitetorchError subclass>: ...` with the same words the Python API uses (the same checks run,
before the model is loaded) and exit with status 1; a usage error (an unknown flag, a number that
does not parse) exits with status 2. In `litetorch chat`, what you type is text: a control-token
string such as `<|im_end|>` cannot end your turn (`--allow-special-tokens-in-content` allows it).
"""
from __future__ import annotations

import argparse
import sys


def _model_path(path):
    from .io.hub import resolve_model_path
    return resolve_model_path(path)


def _load(path):
    from .models.loading import load_model
    print("loading model ...", file=sys.stderr, flush=True)
    return load_model(path)


def _sampling(args) -> dict:
    """The sampling options, checked by the same checks as the API (before the model is loaded)."""
    from . import checks
    from .sampling import Sampler
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                   repetition_penalty=args.repetition_penalty, seed=args.seed)
    Sampler(**options)
    checks.positive_int("max_new_tokens", args.max_new_tokens)
    return options


def cmd_generate(args) -> int:
    from . import checks
    from .generation import generate
    checks.text("prompt", args.prompt)
    sampling = _sampling(args)
    model, tok = _load(args.model)
    prompt = args.prompt  # one user message through the chat template (generate's rule for a string)
    if args.system and not args.raw:
        prompt = [{"role": "system", "content": args.system}, {"role": "user", "content": args.prompt}]
    stream = generate(model, tok, prompt, max_new_tokens=args.max_new_tokens, stream=True, raw=args.raw,
                      allow_special_tokens_in_content=args.allow_special_tokens_in_content, **sampling)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    r = stream.result
    print(f"[{r.finish_reason}] {r.stats}", file=sys.stderr)
    return 0


def cmd_chat(args) -> int:
    from .chat import ChatSession
    sampling = _sampling(args)
    model, tok = _load(args.model)
    chat = ChatSession(model, tok, system_prompt=args.system, max_new_tokens=args.max_new_tokens,
                       allow_special_tokens_in_content=args.allow_special_tokens_in_content, **sampling)
    interactive = sys.stdin.isatty()
    if interactive:
        print("litetorch chat — /reset, /system TEXT, /stats, /exit", file=sys.stderr)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line:  # end of input (piped stdin, or Ctrl-D)
            break
        line = line.strip()
        if not line:
            continue
        if line in ("/exit", "/quit"):
            break
        if line == "/reset":
            chat.reset()
            print("[conversation reset]", flush=True)
            continue
        if line == "/system" or line.startswith("/system "):
            chat.set_system_prompt(line[len("/system"):].strip() or None)
            print(f"[system prompt set: {chat.system_prompt!r}]", flush=True)
            continue
        if line == "/stats":
            s = chat.last.stats if chat.last else None
            used = chat.cache_length * chat.cache.bytes_per_token / 2**20
            print(f"[cache: {chat.cache_length} tokens, {used:.1f} MiB used of {chat.cache.nbytes / 2**20:.1f} MiB"
                  + (f"; last turn: {s}]" if s else "]"), flush=True)
            continue
        if line.startswith("/"):
            print(f"[unknown command {line.split()[0]}; try /reset, /system TEXT, /stats, /exit]", flush=True)
            continue
        print("assistant> ", end="", flush=True)
        try:
            for piece in chat.send(line, stream=True):
                print(piece, end="", flush=True)
        except KeyboardInterrupt:
            print("\n[interrupted]", flush=True)
            continue
        except Exception as e:  # a turn that cannot run (e.g. context full) must not end the chat
            from .errors import LitetorchError
            if not isinstance(e, LitetorchError):
                raise
            print(f"\n[error: {type(e).__name__}: {e}]", flush=True)
            continue
        print(flush=True)
    return 0


def cmd_info(args) -> int:
    from .io.gguf import GGUFFile
    path = _model_path(args.path)
    f = GGUFFile(path)
    print(f"{path}  GGUF v{f.version}  {len(f.metadata)} metadata keys  {len(f.tensors)} tensors")
    for k, v in f.metadata.items():
        if isinstance(v, (list, tuple)) or hasattr(v, "shape"):
            s = f"[{len(v)} items] " + ", ".join(repr(x) for x in list(v[:5]))
        else:
            s = repr(v)
        print(f"  {k:<45} {s[:100]}")
    print(f"\n  {'tensor':<32} {'type':<6} {'shape (NumPy)':<16} bytes")
    for t in f.tensors.values():
        print(f"  {t.name:<32} {t.type_name:<6} {str(t.shape):<16} {t.n_bytes}")
    return 0


def cmd_trace(args) -> int:
    from .trace import save_trace, trace_llama
    if args.ids is not None:  # exact ids: no tokenizer needed (a bare checkpoint directory works)
        from .models.loading import load_llama
        model = load_llama(_model_path(args.model))
        ids = args.ids
    else:
        model, tok = _load(args.model)
        ids = tok.encode(args.prompt)
    if not ids:
        from .errors import ConfigError
        raise ConfigError(f"the prompt must give at least one token, got {args.prompt!r} (give some text or --ids)")
    tensors = trace_llama(model, [ids])
    save_trace(args.out, tensors, prompt=args.prompt, model=str(args.model or "default"),
               config=model.config.to_dict())
    print(f"wrote {len(tensors)} tensors for {len(ids)} tokens to {args.out}")
    return 0


def cmd_stats(args) -> int:
    import json

    from .inspect import format_table, weight_stats
    from .models.loading import load_llama
    model = load_llama(_model_path(args.path))
    rows = weight_stats(model, names=args.names, compact=not args.full)
    if not rows:
        from .errors import ConfigError
        raise ConfigError(f"--names must match a parameter, got {args.names} (names look like "
                          f"model.layers.0.mlp.up_proj.weight)")
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        print(format_table(rows, compact=not args.full))
    return 0


def cmd_train_gpt(args) -> int:
    from .train import main as train_main
    return train_main(args.rest) or 0


def cmd_bench(args) -> int:
    import runpy
    from pathlib import Path
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "run.py"
    if not script.exists():
        print("error: benchmarks/run.py not found (run from a source checkout)", file=sys.stderr)
        return 2
    sys.argv = [str(script)] + args.rest
    runpy.run_path(str(script), run_name="__main__")
    return 0


def _id_list(text: str) -> list[int]:
    try:
        ids = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 1,2,3, got {text!r}") from None
    if not ids:
        raise argparse.ArgumentTypeError("no token ids given")
    return ids


def cmd_exercises(args) -> int:
    """The course's exercises (litetorch/exercises.py): list them, write a student copy, check one."""
    from . import student
    from .errors import ConfigError
    from .exercises import EXERCISES
    if args.action == "list":
        print(f"{'#':>3}  {'lesson':6}  {'name':18}  what to write")
        for ex in EXERCISES:
            print(f"{ex.number:>3}  {ex.lesson:02d}      {ex.name:18}  {ex.task}")
            print(f"{'':31}{ex.path}  ->  {ex.command}")
        print(f"\n{len(EXERCISES)} exercises. `litetorch exercises start DIR` writes a student copy; "
              f"in it, `litetorch exercises check N` grades exercise N.")
        return 0
    if args.action == "start":
        if args.target is None:
            raise ConfigError("litetorch exercises start DIR: give the directory for the student copy")
        dest = student.start(args.target)
        print(f"wrote a student copy to {dest}: {len(EXERCISES)} exercises blanked (EXERCISES.md lists them).\n"
              f"Next: cd {dest} && litetorch exercises check 1")
        return 0
    if args.target is None:
        raise ConfigError("litetorch exercises check N: give the exercise number (or name)")
    result = student.check(args.target, args.dir)
    print(result.report)
    return 0 if result.passed else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="litetorch", description="Transformers from first principles in NumPy.")
    sub = p.add_subparsers(dest="command", required=True)

    def sampling_args(sp):
        sp.add_argument("--model", default=None, help="GGUF file or HF directory (default: SmolLM2-135M-Instruct)")
        sp.add_argument("--max-new-tokens", type=int, default=256)  # (values are checked as the API checks them)
        sp.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        sp.add_argument("--top-k", type=int, default=None)
        sp.add_argument("--top-p", type=float, default=None)
        sp.add_argument("--min-p", type=float, default=None)
        sp.add_argument("--repetition-penalty", type=float, default=None)
        sp.add_argument("--seed", type=int, default=None)
        sp.add_argument("--system", default=None, help="system prompt")
        sp.add_argument("--allow-special-tokens-in-content", action="store_true",
                        help="let control-token strings typed in a message act as control tokens (by default "
                             "they are plain text, so a message cannot forge a turn)")

    g = sub.add_parser("generate", help="stream an answer to a prompt")
    g.add_argument("prompt")
    g.add_argument("--raw", action="store_true", help="use the prompt as is (no chat template)")
    sampling_args(g)
    g.set_defaults(fn=cmd_generate)

    c = sub.add_parser("chat", help="interactive multi-turn chat (reads stdin)")
    sampling_args(c)
    c.set_defaults(fn=cmd_chat)

    i = sub.add_parser("info", help="print a GGUF file's metadata and tensor table")
    i.add_argument("path", nargs="?", default=None)
    i.set_defaults(fn=cmd_info)

    t = sub.add_parser("trace", help="save every named intermediate of a forward pass to .npz")
    t.add_argument("--model", default=None)
    what = t.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="text, tokenized as is (no chat template)")
    what.add_argument("--ids", type=_id_list, help="comma-separated token ids, e.g. 1,2,3")
    t.add_argument("--out", required=True)
    t.set_defaults(fn=cmd_trace)

    s = sub.add_parser("stats", help="weight statistics of a model")
    s.add_argument("path", nargs="?", default=None)
    s.add_argument("--full", action="store_true")
    s.add_argument("--names", nargs="*", default=None, help="exact names or globs (model.layers.0.*)")
    s.add_argument("--json", action="store_true", help="print the rows as JSON")
    s.set_defaults(fn=cmd_stats)

    tg = sub.add_parser("train-gpt", help="train the classroom GPT on generated stories (python -m litetorch.train)",
                        add_help=False)
    tg.add_argument("rest", nargs=argparse.REMAINDER)
    tg.set_defaults(fn=cmd_train_gpt)

    e = sub.add_parser("exercises", help="the course's exercises: list | start DIR | check N [--dir DIR]")
    e.add_argument("action", choices=["list", "start", "check"])
    e.add_argument("target", nargs="?", default=None, help="start: the directory to write; check: the exercise")
    e.add_argument("--dir", default=None, help="check: the student copy (default: the current directory)")
    e.set_defaults(fn=cmd_exercises)

    b = sub.add_parser("bench", help="run the benchmark suite (benchmarks/run.py)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["train-gpt"], ["bench"]):  # these pass every option (even --help) to their own parser
        args = argparse.Namespace(rest=argv[1:], fn=cmd_train_gpt if argv[0] == "train-gpt" else cmd_bench)
        return args.fn(args)
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("\n[interrupted]", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `litetorch info | head`: the reader left; that is not an error
        import os
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0
    except Exception as e:  # a litetorch error is the input's fault: one line; anything else is a bug: a traceback
        from .errors import LitetorchError
        if isinstance(e, (LitetorchError, OSError)):  # (OSError: a file we were asked to read or write)
            print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
