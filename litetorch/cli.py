"""`litetorch` command line: generate | chat | info | trace | stats | train-gpt | presets | loop | exercises | bench.

    litetorch generate "What is the capital of France?"      # default model, chat template applied
    litetorch generate "Hi" --model m.gguf --weights quantized   # weights expanded on use: less memory
    litetorch chat --system "You are a pirate."              # /reset /system TEXT /stats /exit
    litetorch info PATH                                      # metadata and tensor table of a GGUF
    litetorch trace --prompt "Hello" --out trace.npz         # every named intermediate, for ports
    litetorch trace --ids 1,2,3 --model DIR --out trace.npz  # exact token ids (no tokenizer needed)
    litetorch stats [PATH] [--full] [--names GLOB ...] [--json]   # weight statistics
    litetorch presets                                        # the named LoopLM configs and their cost
    litetorch loop train --preset d20_loop [--teacher PATH]  # train (distil) a LoopLM on the stories
    litetorch loop generate CHECKPOINT "prompt"              # continue a prompt with it
    litetorch exercises list | start DIR | check N [--dir DIR]     # the course's exercises
    litetorch train-gpt [--help]                             # train lesson 17's GPT
    litetorch bench [--tiny]                                 # litetorch vs PyTorch (litetorch/bench/)
    litetorch --version

Errors in the input (an empty prompt, a bad option value, a full context) print one line
`error: <LitetorchError subclass>: ...` with the same words the Python API uses (the same checks run,
before the model is loaded) and exit with status 1; a usage error (an unknown flag, named; a number
that does not parse) exits with status 2. In `litetorch chat`, what you type is text: a control-token
string such as `<|im_end|>` cannot end your turn (`--allow-special-tokens-in-content` allows it).
"""
from __future__ import annotations

import argparse
import sys


def _model_path(path):
    from .io.hub import resolve_model_path
    return resolve_model_path(path)


def _load(path, weights="float32"):
    from .models.loading import load_model
    path = _model_path(path)  # a missing file is named here; the default model is fetched here, once
    print("loading model ...", file=sys.stderr, flush=True)
    return load_model(path, weights=weights)


def _sampling(args) -> dict:
    """The sampling options, checked by the same checks as the API (before the model is loaded)."""
    from . import checks
    from .sampling import Sampler
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                   repetition_penalty=args.repetition_penalty, seed=args.seed)
    Sampler(**options)
    checks.positive_int("max_new_tokens", args.max_new_tokens)
    return options


def _check_out_path(path: str) -> None:
    from pathlib import Path

    from .errors import ConfigError
    folder = Path(path).expanduser().parent
    if not folder.is_dir():
        raise ConfigError(f"--out {path}: the folder {folder} does not exist")


def cmd_generate(args) -> int:
    from . import checks
    from .generation import generate
    checks.text("prompt", args.prompt)
    sampling = _sampling(args)
    model, tok = _load(args.model, args.weights)
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
    model, tok = _load(args.model, args.weights)
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
            if interactive:
                print(flush=True)  # leave the "you> " line, so the shell's prompt starts on its own
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
            print(_chat_stats(chat), flush=True)
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


def _chat_stats(chat) -> str:
    """One line: the conversation, the cache, the last turn. After /reset the cache still holds the
    earlier tokens on purpose (the next turn reuses the part its prompt shares, e.g. the system prompt),
    so the line says so instead of looking as if the reset failed."""
    turns = len(chat.history) // 2
    used = chat.cache_length * chat.cache.bytes_per_token / 2**20
    cache = (f"cache: {chat.cache_length} tokens, {used:.1f} MiB used of {chat.cache.nbytes / 2**20:.1f} MiB")
    if not turns and chat.cache_length:
        return (f"[conversation: no turns yet; {cache}: kept for reuse, the next turn runs only the tokens its "
                f"prompt does not share with them]")
    if not turns:
        return f"[conversation: no turns yet; cache: empty, {chat.cache.nbytes / 2**20:.1f} MiB allocated]"
    return f"[conversation: {turns} turn{'s' if turns > 1 else ''}; {cache}; last turn: {chat.last.stats}]"


def _shown(value) -> str:
    """A metadata value as Python would show it: 3, not np.int32(3) (the type is the file's business)."""
    import numpy as np
    return repr(value.item() if isinstance(value, np.generic) else value)


def cmd_info(args) -> int:
    from .io.gguf import GGUFFile
    path = _model_path(args.path)
    f = GGUFFile(path)
    print(f"{path}  GGUF v{f.version}  {len(f.metadata)} metadata keys  {len(f.tensors)} tensors")
    for k, v in f.metadata.items():
        if isinstance(v, (list, tuple)) or hasattr(v, "shape"):
            s = f"[{len(v)} items] " + ", ".join(_shown(x) for x in list(v[:5]))
        else:
            s = _shown(v)
        print(f"  {k:<45} {s[:100]}")
    print(f"\n  {'tensor':<32} {'type':<6} {'shape (NumPy)':<16} bytes")
    for t in f.tensors.values():
        print(f"  {t.name:<32} {t.type_name:<6} {str(t.shape):<16} {t.n_bytes}")
    return 0


def cmd_trace(args) -> int:
    from .trace import save_trace, trace_llama
    _check_out_path(args.out)
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
    from .bench.run import main as bench_main  # part of the package: runs from any directory
    return bench_main(args.rest, prog="litetorch bench")


def cmd_presets(args) -> int:
    from .models import presets
    print(presets.table(context=args.context))
    print(f"\nactive-emb: active parameters without the embedding matrix and the LM head; FLOPs: forward, one token "
          f"at position {args.context}; cache: K/V + recurrent states of a {args.context}-token sequence per token, "
          f"float32 (litetorch/models/presets.py)")
    return 0


def cmd_loop_train(args) -> int:
    from pathlib import Path

    from .loop_train import LoopTrainConfig, LoopTrainer, check_config
    out = Path(args.out)
    if args.resume:
        trainer = LoopTrainer.resume(out / "ckpt", steps=args.steps)
        print(f"resumed {out / 'ckpt'} at step {trainer.step} of {trainer.cfg.steps}", flush=True)
    else:
        given = {k: v for k, v in vars(args).items() if k in LoopTrainConfig.__dataclass_fields__ and v is not None}
        cfg = LoopTrainConfig(**given)
        check_config(cfg)
        trainer = LoopTrainer(cfg)
    cfg, m = trainer.cfg, trainer.model
    teacher = f"; teacher {cfg.teacher} (KL weight {cfg.distill_kl_weight}, tau {cfg.distill_temperature})" \
        if trainer.teacher is not None else ""
    print(f"preset {cfg.preset}: {m.config.structure()}, {m.num_parameters():,} parameters (vocabulary: the "
          f"stories' {m.config.vocab_size} characters){teacher}\n{cfg.steps} steps of {cfg.batch_size}x"
          f"{cfg.block_size} tokens -> {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    trainer.run(out_dir=out, progress=not args.no_progress)
    h = trainer.history
    print(f"step {trainer.step}: val loss {h['val_loss'][-1]:.4f}, {h['val_loops'][-1]:.2f} loops/token "
          f"({h['seconds']:.0f} s of training); checkpoint {out / 'ckpt'}", flush=True)
    if args.export_gguf:
        from .models.looplm_files import save_gguf
        path = save_gguf(trainer.model, args.export_gguf)
        print(f"exported {path} ({path.stat().st_size:,} bytes; ternary layers packed)", flush=True)
    return 0


def cmd_loop_generate(args) -> int:
    from .errors import ConfigError
    from .generation import generate
    from .loop_train import load_for_generation
    model, tok = load_for_generation(args.checkpoint)
    if tok is None:
        raise ConfigError(f"{args.checkpoint} has no tokenizer (a `loop train` checkpoint stores its characters); "
                          f"generate from token ids in Python instead")
    stream = generate(model, tok, tok.encode(args.prompt), max_new_tokens=args.max_new_tokens, stream=True,
                      eos_token_id=[], **_sampling(args))
    print(args.prompt, end="", flush=True)
    for piece in stream:
        print(piece, end="", flush=True)
    print()
    r = stream.result
    print(f"[{r.finish_reason}] {r.stats}", file=sys.stderr)
    return 0


COMMANDS = ("generate", "chat", "info", "trace", "stats", "train-gpt", "presets", "loop", "bench")


def _positive_int(text: str) -> int:
    """argparse type for counts of the loop commands (steps, batch size, ...)."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return n


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
    from . import __version__
    p = argparse.ArgumentParser(prog="litetorch", description="Transformers from first principles in NumPy.")
    p.add_argument("--version", action="version", version=f"litetorch {__version__}")
    # Not required=True: argparse would then answer `litetorch --bogus` with "the following arguments are
    # required: command" instead of naming --bogus. `parse` checks for a command after the unknown options.
    sub = p.add_subparsers(dest="command", metavar="command")

    def sampling_args(sp, model: bool = True):
        if model:
            sp.add_argument("--model", default=None, help="GGUF file or HF directory (default: SmolLM2-135M-Instruct)")
            sp.add_argument("--system", default=None, help="system prompt")
            sp.add_argument("--weights", choices=("float32", "quantized"), default="float32",
                            help="float32: expand every weight at load (default); quantized: keep the GGUF's blocks "
                                 "memory-mapped and expand each weight when it is used (less memory, slower)")
            sp.add_argument("--allow-special-tokens-in-content", action="store_true",
                            help="let control-token strings typed in a message act as control tokens (by default "
                                 "they are plain text, so a message cannot forge a turn)")
        sp.add_argument("--max-new-tokens", type=int, default=256)  # (values are checked as the API checks them)
        sp.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        sp.add_argument("--top-k", type=int, default=None)
        sp.add_argument("--top-p", type=float, default=None)
        sp.add_argument("--min-p", type=float, default=None)
        sp.add_argument("--repetition-penalty", type=float, default=None)
        sp.add_argument("--seed", type=int, default=None)

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

    pr = sub.add_parser("presets", help="the named LoopLM configs: layers, parameters, FLOPs, cache bytes")
    pr.add_argument("--context", type=_positive_int, default=4096, help="context for FLOPs and cache (default 4096)")
    pr.set_defaults(fn=cmd_presets)

    lp = sub.add_parser("loop", help="LoopLM: train a preset on the stories (optionally distilled), generate")
    lsub = lp.add_subparsers(dest="loop_command", metavar="command")  # (not required=True: see above)
    lt_ = lsub.add_parser("train", help="train a preset (litetorch presets lists them)")
    lt_.add_argument("--preset", default=None, help="a preset name (default d20_loop)")
    lt_.add_argument("--teacher", default=None, help="checkpoint of a teacher on the same characters (distillation)")
    lt_.add_argument("--out", default="runs/loop", help="output directory (its ckpt/ is the checkpoint)")
    lt_.add_argument("--resume", action="store_true", help="continue the run in OUT/ckpt")
    lt_.add_argument("--steps", type=_positive_int, default=None)
    lt_.add_argument("--batch-size", dest="batch_size", type=_positive_int, default=None)
    lt_.add_argument("--block-size", dest="block_size", type=_positive_int, default=None)
    lt_.add_argument("--lr", type=float, default=None)
    lt_.add_argument("--seed", type=int, default=None)
    lt_.add_argument("--distill-kl-weight", dest="distill_kl_weight", type=float, default=None)
    lt_.add_argument("--distill-temperature", dest="distill_temperature", type=float, default=None)
    lt_.add_argument("--loop-scale-penalty", dest="loop_scale_penalty", type=float, default=None)
    lt_.add_argument("--penalty-schedule", dest="penalty_schedule", default=None, help="linear | cosine | constant")
    lt_.add_argument("--eval-interval", dest="eval_interval", type=_positive_int, default=None)
    lt_.add_argument("--export-gguf", dest="export_gguf", default=None, help="also write the model as one GGUF")
    lt_.add_argument("--no-progress", action="store_true", help="no progress bar")
    lt_.set_defaults(fn=cmd_loop_train)
    lg = lsub.add_parser("generate", help="continue a prompt with a trained LoopLM")
    lg.add_argument("checkpoint", help="a loop train OUT/ckpt directory, or a LoopLM .safetensors/.npz/.gguf")
    lg.add_argument("prompt")
    sampling_args(lg, model=False)
    lg.set_defaults(fn=cmd_loop_generate)

    tg = sub.add_parser("train-gpt", help="train the classroom GPT on generated stories (python -m litetorch.train)",
                        add_help=False)
    tg.add_argument("rest", nargs=argparse.REMAINDER)
    tg.set_defaults(fn=cmd_train_gpt)

    e = sub.add_parser("exercises", help="the course's exercises: list | start DIR | check N [--dir DIR]")
    e.add_argument("action", choices=["list", "start", "check"])
    e.add_argument("target", nargs="?", default=None, help="start: the directory to write; check: the exercise")
    e.add_argument("--dir", default=None, help="check: the student copy (default: the current directory)")
    e.set_defaults(fn=cmd_exercises)

    b = sub.add_parser("bench", help="litetorch vs PyTorch, same run (--tiny: a smoke run on a tiny random model)")
    b.add_argument("rest", nargs=argparse.REMAINDER)
    b.set_defaults(fn=cmd_bench)
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    """argparse, with errors that name what was wrong: an unknown option, or a missing command."""
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    where = " ".join(["litetorch"] + [c for c in (args.command, getattr(args, "loop_command", None)) if c])
    options = [u for u in unknown if u.startswith("-")]
    if options:
        parser.error(f"unknown option{'s' if len(options) > 1 else ''} {' '.join(options)} for `{where}` "
                     f"(`{where} --help` lists the options)")
    if unknown:
        parser.error(f"unexpected argument{'s' if len(unknown) > 1 else ''} {' '.join(map(repr, unknown))} "
                     f"for `{where}` (`{where} --help` says what it takes)")
    if args.command is None:
        parser.error(f"give a command: {', '.join(COMMANDS)} (`litetorch --help` describes each)")
    if args.command == "loop" and args.loop_command is None:
        parser.error("give a command after `litetorch loop`: train, generate (`litetorch loop --help` describes each)")
    return args


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["train-gpt"], ["bench"]):  # these pass every option (even --help) to their own parser
        args = argparse.Namespace(rest=argv[1:], fn=cmd_train_gpt if argv[0] == "train-gpt" else cmd_bench)
        return args.fn(args)
    args = parse(argv)
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
