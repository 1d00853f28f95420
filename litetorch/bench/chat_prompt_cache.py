"""Prompt caching in a chat: tokens processed and wall time per turn, with and without the cache.

    python -m litetorch.bench.chat_prompt_cache                # default model, 4 turns, ~1-2 min on 2 cores
    python benchmarks/chat_prompt_cache.py --threads 1 --max-new-tokens 24   # the same, from the checkout

A chat with a ~500-token system prompt and four user turns, greedy. Two ways to run each turn:
  cached     one ChatSession: its PromptCache keeps the system prompt and every earlier turn, so a
             turn runs only its new tokens through the model;
  no cache   generate() on the whole conversation from scratch (a fresh KV cache each turn: the
             usual one-token-per-step decode, but the prompt is recomputed every time).
Both give the same tokens (checked). KV-cache memory is 2 * n_layers * n_kv_heads * head_dim * 4
bytes per cached token (float32 K and V in every layer).

Writes litetorch-bench/chat_prompt_cache.json (benchmarks/chat_prompt_cache.py: benchmarks/results/).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from litetorch.bench.machine import blas_threads, cpu_model
from litetorch.chat import ChatSession
from litetorch.generation import generate
from litetorch.models.loading import load_model

DEFAULT_OUT = "litetorch-bench"  # in the current directory; benchmarks/chat_prompt_cache.py passes benchmarks/results

# ~500 tokens of the kind of standing instructions a deployed assistant carries on every turn.
SYSTEM_PROMPT = " ".join([
    "You are Harbor, the customer-support assistant of Northwind Ferries, a company that runs passenger",
    "and car ferries between six island ports. Answer in plain, friendly English, in at most three",
    "sentences, unless the customer asks for detail. Never invent timetables, prices or policies: if",
    "you do not know, say so and point the customer to the booking office.",
    "Facts you may rely on. Ferries sail daily from 06:00 to 22:00. The crossing from Port Alder to",
    "Bramble Island takes forty minutes; from Bramble Island to Cedar Key, one hour and ten minutes;",
    "from Cedar Key to Dunmore, two hours. Foot passengers pay twelve euros per crossing, children",
    "under twelve travel free with an adult, cars cost thirty-five euros including the driver, and",
    "bicycles travel free. Tickets can be bought online, at the terminal, or on board with a card.",
    "Pets are welcome on the open decks and in the pet lounge, but not in the cafe. Wheelchair users",
    "can board through the car deck; ask the crew at the ramp. Boarding closes ten minutes before",
    "departure for foot passengers and twenty minutes before for vehicles.",
    "Rules for changes. A ticket can be changed free of charge up to two hours before departure; after",
    "that, a change costs five euros. Refunds are given in full when Northwind cancels a sailing, and",
    "as a voucher when the customer cancels. In storms, sailings may be cancelled at short notice; the",
    "website and the text-message service announce cancellations at least one hour before departure",
    "whenever possible. Lost property is kept at Port Alder for thirty days.",
    "Style. Greet the customer only in your first reply. Use the customer's words for places. Do not",
    "use lists unless the customer asks for a comparison. If the customer is upset, acknowledge it in",
    "one short sentence before answering. Never ask for card numbers or passwords. If a question is",
    "not about ferries, travel between the islands, or the islands themselves, answer briefly and",
    "politely steer back to how you can help with their journey.",
    "Escalation. Complaints about staff, accidents, injuries, and requests for compensation above",
    "fifty euros must be passed to a human: tell the customer you will forward their message and that",
    "the customer-care team answers within two working days. Do not promise outcomes.",
    "Local knowledge. Bramble Island has a market on Saturdays. Cedar Key has the islands' only",
    "hospital. Port Alder has a car park at six euros per day and a bus to the railway station.",
])

TURNS = [
    "Hi! How long is the crossing from Port Alder to Bramble Island?",
    "How much would it cost for me, my daughter who is nine, and our car?",
    "Can I bring my dog?",
    "And if I need to change the booking tomorrow morning?",
]




def main(argv=None, default_out=DEFAULT_OUT) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=None, help="BLAS threads (default: leave as is)")
    ap.add_argument("--out", default=str(Path(default_out) / "chat_prompt_cache.json"),
                    help="the JSON file to write (default: %(default)s)")
    args = ap.parse_args(argv)

    limits = None
    if args.threads is not None:
        from threadpoolctl import threadpool_limits
        limits = threadpool_limits(limits=args.threads, user_api="blas")  # noqa: F841 (kept alive)

    t0 = time.perf_counter()
    model, tok = load_model(args.model)
    load_s = time.perf_counter() - t0
    c = model.config
    bytes_per_token = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 4  # K and V, float32
    n_system = len(tok.apply_chat_template([{"role": "system", "content": SYSTEM_PROMPT}],
                                           add_generation_prompt=False, tokenize=True))
    header = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "blas": blas_threads(),
        "OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS"), "numpy": np.__version__,
        "python": platform.python_version(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model": str(args.model or "default (SmolLM2-135M-Instruct Q4_1, dequantized to float32)"),
        "system_prompt_tokens": n_system, "turns": len(TURNS), "max_new_tokens": args.max_new_tokens,
        "decoding": "greedy", "kv_bytes_per_token": bytes_per_token, "load_seconds": round(load_s, 2),
    }
    print("# Chat with prompt caching vs without")
    print(f"# CPU: {header['cpu']} ({header['cores']} cores); BLAS: {header['blas']}; "
          f"OPENBLAS_NUM_THREADS={header['OPENBLAS_NUM_THREADS']}; numpy {np.__version__}")
    print(f"# model: {header['model']}; system prompt {n_system} tokens; {len(TURNS)} turns; "
          f"greedy, max_new_tokens={args.max_new_tokens}")
    print(f"# KV cache: 2 * {c.num_hidden_layers} layers * {c.num_key_value_heads} kv heads * {c.head_dim} dims "
          f"* 4 bytes = {bytes_per_token} bytes ({bytes_per_token / 1024:.1f} KiB) per token\n")

    chat = ChatSession(model, tok, system_prompt=SYSTEM_PROMPT, max_new_tokens=args.max_new_tokens)
    rows = []
    for i, text in enumerate(TURNS, 1):
        messages = chat.messages([{"role": "user", "content": text}])

        t = time.perf_counter()
        cached = chat.send(text)
        cached_s = time.perf_counter() - t

        t = time.perf_counter()
        fresh = generate(model, tok, messages, max_new_tokens=args.max_new_tokens)  # no prompt cache
        fresh_s = time.perf_counter() - t
        assert fresh.token_ids == cached.token_ids, f"turn {i}: prompt caching changed the tokens"

        kv_tokens = len(chat.cache)
        rows.append({
            "turn": i, "user": text, "reply": cached.text, "prompt_tokens": cached.stats.prompt_tokens,
            "new_tokens": len(cached.token_ids),
            "cached": {"reused": cached.stats.reused_tokens, "processed": cached.stats.forwarded_tokens,
                       "prefill_s": cached.stats.prefill_seconds, "decode_s": cached.stats.decode_seconds,
                       "wall_s": cached_s},
            "no_cache": {"reused": 0, "processed": fresh.stats.forwarded_tokens,
                         "prefill_s": fresh.stats.prefill_seconds, "decode_s": fresh.stats.decode_seconds,
                         "wall_s": fresh_s},
            "kv_cache_tokens": kv_tokens, "kv_cache_bytes": kv_tokens * bytes_per_token,
            "kv_cache_bytes_allocated": chat.cache.nbytes,
        })

    print(f"{'':>4} {'prompt':>7} | {'cached':^21} | {'no cache':^21} | {'wall':>8} | {'KV cache':^17}")
    print(f"{'turn':>4} {'tokens':>7} | {'processed':>10} {'wall s':>10} | {'processed':>10} {'wall s':>10} | "
          f"{'speed-up':>8} | {'tokens':>7} {'MiB':>9}")
    print("-" * 86)
    for r in rows:
        a, b = r["cached"], r["no_cache"]
        print(f"{r['turn']:>4} {r['prompt_tokens']:>7} | {a['processed']:>10} {a['wall_s']:>10.2f} | "
              f"{b['processed']:>10} {b['wall_s']:>10.2f} | {b['wall_s'] / a['wall_s']:>7.1f}x | "
              f"{r['kv_cache_tokens']:>7} {r['kv_cache_bytes'] / 2**20:>9.2f}")
    tot = {k: sum(r[k]["processed"] for r in rows) for k in ("cached", "no_cache")}
    wall = {k: sum(r[k]["wall_s"] for r in rows) for k in ("cached", "no_cache")}
    print("-" * 86)
    print(f"{'all':>4} {'':>7} | {tot['cached']:>10} {wall['cached']:>10.2f} | {tot['no_cache']:>10} "
          f"{wall['no_cache']:>10.2f} | {wall['no_cache'] / wall['cached']:>7.1f}x |")
    print(f"\nprocessed = tokens run through the model (prefill + one per decode step); the replies are "
          f"identical.\nKV cache allocated by the session: {chat.cache.nbytes / 2**20:.1f} MiB "
          f"(room for {chat.cache.caches.max_len} tokens; it doubles when full).")
    for r in rows:
        print(f"  turn {r['turn']}: {r['user']!r} -> {r['reply']!r}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"header": header, "turns": rows,
                               "totals": {"processed": tot, "wall_s": wall}}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
