"""litetorch vs HF transformers (PyTorch, eager, float32) on SmolLM2-135M, in the same run.

    litetorch bench                          # full suite (~8 min on 2 cores); writes ./litetorch-bench/
    litetorch bench --tiny                   # smoke run on a tiny random Llama (under a minute)
    python benchmarks/run.py [--tiny]        # the same from the source checkout; writes benchmarks/results/

Rows (every speed row is paired with a token-identity check against the reference path):
  decode      tokens/s for 128 new greedy tokens after a 512-token prompt, KV cache, prompt excluded
  prefill     tokens/s for the 512-token prompt
  no-cache    decode tokens/s recomputing the whole sequence each step (64-token prompt, 16 tokens)
  context     per-token decode time at context 16 .. 2048, with and without the cache (litetorch)
  bound       the NumPy GEMV bound: one single-row matmul over every float32 weight matrix
  chat        litetorch.bench.chat_prompt_cache: tokens processed and time per turn, with/without prompt cache
  train       litetorch.bench.train_gpt: GPT training steps/s and tokens/s, litetorch vs PyTorch

Each engine runs in its own subprocess so its peak resident memory (VmHWM, see peak_rss_mb) is its own. A worker is
this module run with `python -m` and the driver's own litetorch first on its PYTHONPATH, so it runs
the same code as the driver, from a source checkout or from an installed package alike.
Both run with the same BLAS thread count (litetorch: threadpoolctl; torch: set_num_threads).
Both processes load their model first and then take turns: round r times one prefill + decode of
litetorch and one of HF, back to back (the order alternates between rounds), `--repeats` rounds
(default 5). On a shared machine the speed moves by 10-30% from minute to minute, so two engines
measured minutes apart are partly measuring the minute; within a round both see the same one.
The table gives each engine's fastest round (as `timeit` does) and their ratio, and the median of
the per-round ratios. Every round's times are kept in the JSON, and every round must give the
same tokens.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np

import litetorch
from litetorch.bench.machine import cpu_model, missing_reference
from litetorch.errors import BenchmarkError

DEFAULT_OUT = "litetorch-bench"  # in the current directory; benchmarks/run.py passes benchmarks/results

PROMPT_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden press adapted from wine making. "
)


def peak_rss_mb() -> float:
    """This process's peak resident memory in MiB: Linux's VmHWM, the high-water mark of this process's
    own memory. Not ru_maxrss: Linux carries it across exec, so a worker spawned by a process that had
    grown to 2.4 GB (pytest, late in the suite) reported 2.4 GB before it had loaded anything."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024.0  # kB
    except (OSError, StopIteration):  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss / 2**20 if sys.platform == "darwin" else rss / 1024.0



def blas_info(threads: int) -> dict:
    info = {"numpy": np.__version__, "threads_requested": threads}
    try:
        from threadpoolctl import threadpool_info
        info["threadpools"] = [{k: d.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
                               for d in threadpool_info()]
    except ImportError:
        info["threadpools"] = "threadpoolctl not installed"
    return info


def limit_threads(n: int):
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        return None


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------
def prompt_ids(tok, n: int) -> list[int]:
    ids = []
    while len(ids) < n:
        ids += tok.encode(PROMPT_TEXT)
    return ids[:n]


def tiny_checkpoint(tmp: Path) -> Path:
    """A tiny random Llama saved as an HF directory (for --tiny): both engines load the same file."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                      tie_word_embeddings=True)
    LlamaForCausalLM(cfg).save_pretrained(tmp, safe_serialization=True)
    return tmp


# ------------------------------------------------------------------------------------------------
# Workers (each in its own process)
# ------------------------------------------------------------------------------------------------
PROTOCOL = "@@ "  # prefix of the worker's answers on stdout (anything else printed there is ignored)


def serve(timed_run, rest) -> None:
    """A worker's side of the turn-taking: answer "timed" with one timed run (tokens, prefill s,
    decode s) and "rest" with the rest of the engine's rows (given every timed run), then exit."""
    runs = []
    print(PROTOCOL + json.dumps("ready"), flush=True)
    for line in sys.stdin:
        if line.strip() == "timed":
            runs.append(timed_run())
            print(PROTOCOL + json.dumps(runs[-1]), flush=True)
        elif line.strip() == "rest":
            print(PROTOCOL + json.dumps(rest(runs)), flush=True)
            return


def fastest(runs: list, res: dict):
    """The tokens and the fastest prefill and decode of the timed runs (tokens, prefill s, decode s);
    every run's times go into `res`; differing tokens are an error."""
    if any(r[0] != runs[0][0] for r in runs):
        raise BenchmarkError("repeated greedy runs produced different tokens")
    res["prefill_s_repeats"] = [r[1] for r in runs]
    res["decode_s_repeats"] = [r[2] for r in runs]
    return runs[0][0], min(r[1] for r in runs), min(r[2] for r in runs)


def worker_litetorch(args) -> None:
    limit_threads(args.threads)
    import litetorch  # noqa: F401
    from litetorch.generation import PromptCache
    from litetorch.runtime import Runtime
    pinned = Runtime(decode_threads=args.threads)  # the same thread count as torch in this run
    from litetorch.models.loading import load_llama
    from litetorch.tensor import no_grad

    t0 = time.perf_counter()
    model = load_llama(args.model)
    load_s = time.perf_counter() - t0
    ids = json.loads(Path(args.ids).read_text())
    eos = args.eos

    def greedy_run(prompt, n_new, around_decode=None, runtime=pinned):
        """(tokens, prefill s, decode s); `around_decode` is a context entered for the decode steps only."""
        pc = PromptCache(model, len(prompt) + n_new, runtime=runtime)
        t0 = time.perf_counter()
        logits = pc.extend(prompt)[-1]
        t_prefill = time.perf_counter() - t0
        out = []
        with around_decode or nullcontext():
            t0 = time.perf_counter()
            for i in range(n_new):
                logits = logits.copy()
                logits[eos] = -np.inf  # like HF's min_new_tokens: never stop early
                tok = int(np.argmax(logits))
                out.append(tok)
                if i < n_new - 1:
                    logits = pc.extend([tok])[-1]
            t_decode = time.perf_counter() - t0
        return out, t_prefill, t_decode

    def no_cache_run(prompt, n_new):
        seq, out = list(prompt), []
        t0 = time.perf_counter()
        with no_grad():
            for i in range(n_new):
                logits = model(np.asarray([seq]), logits_to_keep=1).data[0, -1].copy()
                logits[eos] = -np.inf
                tok = int(np.argmax(logits))
                out.append(tok)
                seq.append(tok)
        return out, time.perf_counter() - t0

    def rest(runs) -> dict:
        res = {"engine": "litetorch", "load_s": load_s}
        out, t_pre, t_dec = fastest(runs, res)
        res.update(decode_tokens=out, prefill_s=t_pre, decode_s=t_dec,
                   prefill_tps=len(ids["prompt"]) / t_pre, decode_tps=(args.new_tokens - 1) / t_dec,
                   peak_rss_generate_mb=peak_rss_mb())  # load + 512-token prefill + 128-token decode
        # litetorch's default: measure 1 vs all threads per step
        auto_out, _, t_auto = greedy_run(ids["prompt"], args.new_tokens, runtime=Runtime(decode_threads="auto"))
        res.update(decode_tps_auto=(args.new_tokens - 1) / t_auto, auto_tokens_identical=auto_out == out)
        nc_out, nc_s = no_cache_run(ids["short"], args.nocache_tokens)
        res.update(nocache_tokens=nc_out, nocache_tps=args.nocache_tokens / nc_s)
        cached_short, _, _ = greedy_run(ids["short"], args.nocache_tokens)
        res["nocache_equals_cached"] = nc_out == cached_short

        # Where a decode step goes: time inside the weight matmuls (`ops.matmul.linear`) vs everything
        # else (attention over the cache, norms, RoPE, Python), over the benchmark's own decode.
        from litetorch.bench.decode_split import timing_weight_matmuls
        timer = timing_weight_matmuls()
        split_out, _, t_split = greedy_run(ids["prompt"], args.new_tokens, around_decode=timer)
        steps = args.new_tokens - 1
        res["decode_split_ms"] = {"step": 1e3 * t_split / steps, "weight_matmuls": 1e3 * timer.seconds / steps,
                                  "other": 1e3 * (t_split - timer.seconds) / steps, "tokens_identical": split_out == out}

        # Per-token decode cost against context length, with and without the cache.
        sweep = []
        for L in args.contexts:
            ctx = (ids["prompt"] * (L // len(ids["prompt"]) + 1))[:L]
            pc = PromptCache(model, L + 9, runtime=pinned)
            pc.extend(ctx)
            t0 = time.perf_counter()
            for i in range(8):
                pc.extend([ctx[i]])
            cached = (time.perf_counter() - t0) / 8
            t0 = time.perf_counter()
            with no_grad():
                model(np.asarray([ctx]), logits_to_keep=1)
            sweep.append({"context": L, "cached_s": cached, "nocache_s": time.perf_counter() - t0})
        res["context_sweep"] = sweep

        # The GEMV bound: one single-row product with every float32 weight matrix, once per token.
        # (Per checkpoint matrix: the fused qkv_proj / gate_up_proj split back into q, k, v / gate, up row
        # views, so the bound means what it meant before the fusion became the definition.)
        from litetorch.nn.module import split_fused_names
        weights = split_fused_names(model, {n: p.data for n, p in model.named_parameters()})
        mats = [w for w in weights.values() if w.ndim == 2]
        # The best NumPy can do per token: time both 1 and 2 BLAS threads and keep the faster.
        from litetorch.threads import blas_threads
        x = {m.shape[1]: np.random.default_rng(0).standard_normal((1, m.shape[1])).astype(np.float32) for m in mats}
        by_threads = {}
        for n in sorted({1, 2, args.threads}):
            with blas_threads(n):
                best = float("inf")
                for _ in range(5):
                    t0 = time.perf_counter()
                    for m in mats:
                        x[m.shape[1]] @ m.T
                    best = min(best, time.perf_counter() - t0)
            by_threads[str(n)] = 1.0 / best
        res["gemv_bound_tps_by_threads"] = by_threads  # the bound at each BLAS thread count
        res["gemv_bound_tps"] = max(by_threads.values())  # the best of them: what the decode share is held to

        # The same share, measured so that both sides see the same machine: on a shared machine the
        # bandwidth moves by 10-30% from minute to minute, and the decode above and the bound passes
        # above ran at different moments. Here each decode step is followed at once by one GEMV pass
        # at the same thread count, and the medians are compared.
        pc = PromptCache(model, len(ids["prompt"]) + args.new_tokens, runtime=pinned)
        logits = pc.extend(ids["prompt"])[-1]
        step_s, pass_s = [], []
        for i in range(args.new_tokens - 1):
            tok = int(np.argmax(logits))
            t0 = time.perf_counter()
            logits = pc.extend([tok])[-1]
            step_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            for m in mats:
                x[m.shape[1]] @ m.T
            pass_s.append(time.perf_counter() - t0)
        res["interleaved"] = {"steps": len(step_s), "decode_step_ms_median": 1e3 * float(np.median(step_s)),
                              "gemv_pass_ms_median": 1e3 * float(np.median(pass_s)),
                              "share": float(np.median(pass_s) / np.median(step_s))}
        res["weight_bytes"] = int(sum(m.nbytes for m in mats))
        res["peak_rss_mb"] = peak_rss_mb()
        return res

    greedy_run(ids["prompt"][:32], 4)  # warm up
    serve(lambda: greedy_run(ids["prompt"], args.new_tokens), rest)


def worker_hf(args) -> None:
    import torch
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM
    t0 = time.perf_counter()
    p = Path(args.model)
    if p.is_dir():
        model = AutoModelForCausalLM.from_pretrained(p, dtype=torch.float32)
    else:
        model = AutoModelForCausalLM.from_pretrained(p.parent, gguf_file=p.name, dtype=torch.float32)
    model.eval()
    load_s = time.perf_counter() - t0
    ids = json.loads(Path(args.ids).read_text())

    def run(prompt, n_new):
        x = torch.tensor([prompt])
        kw = dict(do_sample=False, attention_mask=torch.ones_like(x), pad_token_id=args.eos,
                  eos_token_id=args.eos)
        with torch.no_grad():
            t0 = time.perf_counter()
            model.generate(x, max_new_tokens=1, min_new_tokens=1, **kw)
            t_one = time.perf_counter() - t0
            t0 = time.perf_counter()
            out = model.generate(x, max_new_tokens=n_new, min_new_tokens=n_new, **kw)
            t_all = time.perf_counter() - t0
        return out[0, len(prompt):].tolist(), t_one, t_all

    def no_cache_run(prompt, n_new):
        seq, out = list(prompt), []
        with torch.no_grad():
            t0 = time.perf_counter()
            for _ in range(n_new):
                logits = model(torch.tensor([seq]), use_cache=False).logits[0, -1].clone()
                logits[args.eos] = -float("inf")
                tok = int(torch.argmax(logits))
                out.append(tok)
                seq.append(tok)
        return out, time.perf_counter() - t0

    def timed_run():
        """(tokens, prefill s, decode s): generate() of one token is the prefill; the rest is decode."""
        toks, t_one, t_all = run(ids["prompt"], args.new_tokens)
        return toks, t_one, t_all - t_one

    def rest(runs) -> dict:
        res = {"engine": "hf", "load_s": load_s}
        out, t_pre, t_dec = fastest(runs, res)
        res.update(decode_tokens=out, prefill_s=t_pre, prefill_tps=len(ids["prompt"]) / t_pre, decode_s=t_dec,
                   decode_tps=(args.new_tokens - 1) / t_dec, peak_rss_generate_mb=peak_rss_mb())
        nc_out, nc_s = no_cache_run(ids["short"], args.nocache_tokens)
        res.update(nocache_tokens=nc_out, nocache_tps=args.nocache_tokens / nc_s, peak_rss_mb=peak_rss_mb(),
                   torch=torch.__version__, torch_threads=torch.get_num_threads())
        return res

    run(ids["prompt"][:32], 4)  # warm up
    serve(timed_run, rest)


# ------------------------------------------------------------------------------------------------
# Driver
# ------------------------------------------------------------------------------------------------
def plot_speed(runs: list, path: Path, plt) -> None:
    """Bars per BLAS thread count: decode tok/s (litetorch, HF, the GEMV bound) and prefill tok/s."""
    fig, (ax_d, ax_p) = plt.subplots(1, 2, figsize=(9, 3.8))
    width = 0.27
    for i, r in enumerate(runs):
        lt_res, hf_res = r["litetorch"], r["hf"]
        bound = 1e3 / lt_res["interleaved"]["gemv_pass_ms_median"]  # one GEMV pass per token, median
        for j, (label, value, color) in enumerate((("litetorch", lt_res["decode_tps"], "C0"),
                                                   ("HF eager fp32", hf_res["decode_tps"], "C1"),
                                                   ("GEMV bound (median pass)", bound, "0.6"))):
            ax_d.bar(i + (j - 1) * width, value, width, color=color, label=label if i == 0 else None)
        for j, (label, value, color) in enumerate((("litetorch", lt_res["prefill_tps"], "C0"),
                                                   ("HF eager fp32", hf_res["prefill_tps"], "C1"))):
            ax_p.bar(i + (j - 0.5) * width, value, width, color=color, label=label if i == 0 else None)
    for ax, title in ((ax_d, "decode tok/s (KV cache, greedy)"), (ax_p, "prefill tok/s (512-token prompt)")):
        ax.set_xticks(range(len(runs)), [f"{r['threads']} BLAS thread(s)" for r in runs])
        ax.set_title(title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def module_command(module: str, *args: str) -> tuple[list[str], dict]:
    """(command, environment) that run `python -m module args` on the litetorch this process imported:
    its folder goes first on PYTHONPATH, so an editable install, a checkout or site-packages all work."""
    import site
    home = str(Path(litetorch.__file__).resolve().parent.parent)
    env = dict(os.environ)
    installed = {str(Path(p).resolve()) for p in site.getsitepackages() + [site.getusersitepackages()]}
    if home not in installed:  # (site-packages is on the child's path anyway, after the standard library)
        rest = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != home]
        env["PYTHONPATH"] = os.pathsep.join([home] + rest)
    return [sys.executable, "-m", module, *args], env


class Worker:
    """One engine's process, loaded and waiting for the driver's "timed" / "rest" (see `serve`)."""

    def __init__(self, engine: str, args, ids_path: Path, threads: int):
        cmd, env = module_command("litetorch.bench.run", "--worker", engine, "--model", str(args.model), "--ids", str(ids_path),
               "--threads", str(threads), "--new-tokens", str(args.new_tokens), "--eos", str(args.eos),
                                  "--nocache-tokens", str(args.nocache_tokens), "--contexts", *map(str, args.contexts))
        self.engine = engine
        self.stderr = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: nobody reads it until the end,
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,  # and a full pipe
                                     stderr=self.stderr, text=True, env=env)              # would block the worker
        self.ask(None)  # wait until the model is loaded and warmed up

    def ask(self, command: str | None):
        if command is not None:
            self.proc.stdin.write(command + "\n")
            self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(PROTOCOL):
                return json.loads(line[len(PROTOCOL):])
        self.proc.wait()
        self.stderr.seek(0)
        raise BenchmarkError(f"{self.engine} worker failed:\n{self.stderr.read()[-4000:]}")

    def finish(self) -> dict:
        res = self.ask("rest")
        self.proc.stdin.close()
        self.proc.wait()
        self.stderr.close()
        return res


PAUSE_S = 0.5  # between two engines' turns: the last one's spinning BLAS / OpenMP threads go to sleep


def take_turns(workers: list, rounds: int) -> list:
    """`rounds` rounds; in each, every worker does one timed run (prefill + decode), one after the
    other, first one engine first and then the other. Returns [{engine: (tokens, prefill s, decode s)}]."""
    out = []
    for r in range(rounds):
        got = {}
        for w in (workers if r % 2 == 0 else workers[::-1]):
            time.sleep(PAUSE_S)
            got[w.engine] = w.ask("timed")
        out.append(got)
    return out


def per_round_ratios(rounds: list) -> dict:
    """litetorch ÷ HF speed within each round (both measured in the same minute), and their median."""
    decode = [r["hf"][2] / r["litetorch"][2] for r in rounds]  # same token count: time ratio = speed ratio
    prefill = [r["hf"][1] / r["litetorch"][1] for r in rounds]
    return {"decode": decode, "prefill": prefill,
            "decode_median": float(np.median(decode)), "prefill_median": float(np.median(prefill))}


def main(argv=None, default_out=DEFAULT_OUT, prog=None):
    ap = argparse.ArgumentParser(prog=prog, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="smoke run on a tiny random model")
    ap.add_argument("--model", default=None)
    ap.add_argument("--threads", type=int, nargs="*", default=None, help="BLAS thread counts to compare")
    ap.add_argument("--prompt-tokens", type=int, default=512)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=None,
                    help="rounds (default 5; 3 with --tiny); in each, both engines time one prefill + decode")
    ap.add_argument("--nocache-tokens", type=int, default=16)
    ap.add_argument("--contexts", type=int, nargs="*", default=[16, 64, 256, 1024, 2048])
    ap.add_argument("--eos", type=int, default=2)
    ap.add_argument("--out", default=str(default_out), help=f"folder for the results (default: {default_out})")
    ap.add_argument("--no-extras", action="store_true", help="skip the chat and training benchmarks")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--ids", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        args.threads = args.threads[0]
        (worker_litetorch if args.worker == "litetorch" else worker_hf)(args)  # answers the driver (`serve`)
        return 0
    missing = missing_reference("torch", "transformers")
    if missing:
        print(f"error: {missing}", file=sys.stderr)
        return 1
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)  # now, not after minutes of measuring
    with tempfile.TemporaryDirectory(prefix="litetorch-bench-") as tmp:
        return measure(args, Path(tmp), out_dir)


def measure(args, tmp: Path, out_dir: Path) -> int:
    """Load both engines at each thread count, let them take turns, print the table, write the results."""
    if args.tiny:
        args.model = str(tiny_checkpoint(tmp / "tiny"))
        args.prompt_tokens, args.new_tokens, args.nocache_tokens = 64, 16, 4
        args.contexts = [16, 64]
        args.repeats = args.repeats or 3
        rng = np.random.default_rng(0)
        ids = {"prompt": rng.integers(3, 256, args.prompt_tokens).tolist(), "short": rng.integers(3, 256, 16).tolist()}
    else:
        from litetorch.io.hub import default_model_path
        from litetorch.models.loading import load_tokenizer
        args.model = str(args.model or default_model_path())
        tok = load_tokenizer(args.model)
        ids = {"prompt": prompt_ids(tok, args.prompt_tokens), "short": prompt_ids(tok, 64)}
    args.repeats = args.repeats or 5
    ids_path = tmp / "ids.json"
    ids_path.write_text(json.dumps(ids))
    threads = args.threads or ([1] if args.tiny else [1, 2])

    header = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
        "blas": blas_info(threads[0]), "model": args.model, "prompt_tokens": args.prompt_tokens,
        "new_tokens": args.new_tokens, "command": " ".join([Path(sys.executable).name] + sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print(f"# litetorch benchmark — {header['cpu']}, {header['cores']} cores, numpy {np.__version__}")
    print(f"# model {Path(args.model).name}; prompt {args.prompt_tokens} tokens; {args.new_tokens} new tokens")
    runs = []
    for n in threads:
        workers = [Worker("litetorch", args, ids_path, n), Worker("hf", args, ids_path, n)]
        rounds = take_turns(workers, args.repeats)
        lt_res, hf_res = (w.finish() for w in workers)  # one after the other: the rest runs alone
        paired = per_round_ratios(rounds)
        runs.append({"threads": n, "litetorch": lt_res, "hf": hf_res, "per_round_ratio": paired})
        same = lt_res["decode_tokens"] == hf_res["decode_tokens"]
        nc_same = lt_res["nocache_tokens"] == hf_res["nocache_tokens"]
        print(f"\n## BLAS threads = {n}")
        print("| row | litetorch | HF eager fp32 | ratio | tokens identical |")
        print("|---|---|---|---|---|")
        print(f"| decode tok/s (KV cache, best of {args.repeats} rounds) | {lt_res['decode_tps']:.1f} | "
              f"{hf_res['decode_tps']:.1f} | {lt_res['decode_tps'] / hf_res['decode_tps']:.2f}x | {same} |")
        print(f"| decode, litetorch ÷ HF within each round (median of {args.repeats}) | | | "
              f"{paired['decode_median']:.2f}x | {same} |")
        # litetorch's default may use every core, so it is compared with HF only at HF's default (every core)
        auto_vs_hf = (f"{hf_res['decode_tps']:.1f} | {lt_res['decode_tps_auto'] / hf_res['decode_tps']:.2f}x"
                      if n == os.cpu_count() else f"| (compared at {os.cpu_count()} threads only)")
        print(f"| decode tok/s, litetorch default (auto thread choice, one run) | {lt_res['decode_tps_auto']:.1f} | "
              f"{auto_vs_hf} | {same and lt_res['auto_tokens_identical']} |")
        print(f"| prefill tok/s ({args.prompt_tokens}, best of {args.repeats} rounds) | {lt_res['prefill_tps']:.1f} | "
              f"{hf_res['prefill_tps']:.1f} | {lt_res['prefill_tps'] / hf_res['prefill_tps']:.2f}x | {same} |")
        print(f"| prefill, litetorch ÷ HF within each round (median of {args.repeats}) | | | "
              f"{paired['prefill_median']:.2f}x | {same} |")
        print(f"| decode tok/s, no cache | {lt_res['nocache_tps']:.2f} | {hf_res['nocache_tps']:.2f} | "
              f"{lt_res['nocache_tps'] / hf_res['nocache_tps']:.2f}x | {nc_same and lt_res['nocache_equals_cached']} |")
        print(f"| peak RSS MB, generating (load + prefill + decode) | {lt_res['peak_rss_generate_mb']:.0f} | "
              f"{hf_res['peak_rss_generate_mb']:.0f} | | |")
        print(f"| peak RSS MB, whole run (incl. no-cache 2048-token forwards) | {lt_res['peak_rss_mb']:.0f} | "
              f"{hf_res['peak_rss_mb']:.0f} | | |")
        print(f"| load s | {lt_res['load_s']:.1f} | {hf_res['load_s']:.1f} | | |")
        print("each round, litetorch vs HF tok/s: " + "; ".join(
            f"decode {(args.new_tokens - 1) / r['litetorch'][2]:.1f} vs {(args.new_tokens - 1) / r['hf'][2]:.1f}, "
            f"prefill {args.prompt_tokens / r['litetorch'][1]:.0f} vs {args.prompt_tokens / r['hf'][1]:.0f}"
            for r in rounds))
        bound, same_n = lt_res["gemv_bound_tps"], lt_res["gemv_bound_tps_by_threads"][str(n)]
        print(f"GEMV bound: {bound:.1f} tok/s (best of " + ", ".join(
            f"{k} thr {v:.1f}" for k, v in lt_res["gemv_bound_tps_by_threads"].items())
            + f") over {lt_res['weight_bytes'] / 2**20:.0f} MiB of float32 weights")
        print(f"litetorch decode at {n} thread(s) = {100 * lt_res['decode_tps'] / same_n:.0f}% of the {n}-thread bound, "
              f"{100 * lt_res['decode_tps'] / bound:.0f}% of the best; default (auto threads) = "
              f"{100 * lt_res['decode_tps_auto'] / bound:.0f}% of the best")
        il = lt_res["interleaved"]
        print(f"interleaved (each decode step followed by one GEMV pass, {il['steps']} of each): median step "
              f"{il['decode_step_ms_median']:.1f} ms, median pass {il['gemv_pass_ms_median']:.1f} ms -> decode at "
              f"{100 * il['share']:.0f}% of the {n}-thread bound")
        sp = lt_res["decode_split_ms"]
        print(f"decode step {sp['step']:.1f} ms = weight matmuls {sp['weight_matmuls']:.1f} ms + everything else "
              f"{sp['other']:.1f} ms (attention over the cache, norms, RoPE, Python); tokens identical: "
              f"{sp['tokens_identical']}")
        sw = lt_res["context_sweep"]
        print("context: " + ", ".join(f"{r['context']}: {1e3 * r['cached_s']:.1f} ms cached / "
                                      f"{1e3 * r['nocache_s']:.0f} ms no cache" for r in sw))
        if not same:
            print("WARNING: decode tokens differ between litetorch and HF")

    extras = {}
    if not args.tiny and not args.no_extras:
        # The chat (prompt caching) and training benchmarks are their own modules; run them here too.
        for key, name in (("chat", "chat_prompt_cache"), ("train", "train_gpt")):
            print(f"\n## {key}: python -m litetorch.bench.{name}", flush=True)
            cmd, env = module_command(f"litetorch.bench.{name}", "--threads", "1",
                                      "--out", str(out_dir / f"{name}.json"))
            out = subprocess.run(cmd, env=env, capture_output=True, text=True)
            print(out.stdout[-4000:] if out.returncode == 0 else f"FAILED:\n{out.stderr[-3000:]}")
            extras[key] = {"returncode": out.returncode, "json": f"{name}.json"}
    name = "bench_tiny" if args.tiny else "bench_smollm2"
    (out_dir / f"{name}.json").write_text(json.dumps({"header": header, "runs": runs, "extras": extras}, indent=1))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in runs:
            sw = r["litetorch"]["context_sweep"]
            xs = [s["context"] for s in sw]
            ax.plot(xs, [1e3 * s["cached_s"] for s in sw], "o-", label=f"KV cache ({r['threads']} thr)")
            ax.plot(xs, [1e3 * s["nocache_s"] for s in sw], "s--", label=f"no cache ({r['threads']} thr)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel("time per new token (ms)")
        ax.set_title("litetorch decode cost vs context")
        ax.legend()
        fig.tight_layout()
        fig.savefig(out_dir / f"{name}_context.png", dpi=110)
        plt.close(fig)
        plot_speed(runs, out_dir / f"{name}_speed.png", plt)
    except ImportError:
        pass
    print(f"\nwrote {out_dir / (name + '.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
