"""The benchmarks: litetorch against PyTorch and HF transformers, measured in the same run (lesson 22).

They are part of the package, so `litetorch bench` runs from any directory after `pip install`; the
scripts in the source checkout's `benchmarks/` are thin wrappers that call these modules and write
to `benchmarks/results/` (the results the README and the lessons quote).

    run                 litetorch vs HF's LlamaForCausalLM on SmolLM2-135M (or --tiny), each engine in
                        its own process (`python -m litetorch.bench.run --worker ...`)
    decode_split        where a decode step goes: the weight matmuls vs everything else
    chat_prompt_cache   a four-turn chat with and without prompt caching
    train_gpt           lesson 17's GPT trained by litetorch and by its PyTorch twin, step for step
    torch_gpt           that PyTorch twin (plain torch modules, litetorch's parameter names)
    machine             the CPU and BLAS lines every benchmark prints

Every benchmark but `machine` needs the `reference` extra (torch, transformers): they measure
against it.
"""
