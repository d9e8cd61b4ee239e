"""Teacher generation benchmark: cdscale's engine path against Hugging Face `generate`,
prefix caching on against off, and n samples per request against n separate requests.

The prompts share a long instruction prefix (as context-distillation teacher prompts do)
followed by a distinct question. Output lengths are fixed (`ignore_eos` / `min_new_tokens`)
so both paths produce the same number of tokens. Engines get one CPU each, as in a run;
Hugging Face `generate` runs in this process on as many threads as there are engines.
"""

from __future__ import annotations

import random
import statistics
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from benchmarks.common import Engines, Timer
from cdscale.teacher.group import EngineGroup

INSTRUCTION = (
    "You are a careful assistant. Read the question, think about what is asked, and answer "
    "in one short sentence. Use plain words, keep numbers as digits, do not repeat the "
    "question, and do not add any greeting or closing remark. If the question is ambiguous, "
    "pick the most common reading and answer that. "
)
QUESTIONS = [
    "What is {a} plus {b}?",
    "Name a colour that starts with {c}.",
    "Spell {a} in words.",
    "Is {a} larger than {b}?",
]


def shared_prefix_prompts(tokenizer: Any, n: int, prefix_tokens: int, seed: int) -> list[list[int]]:
    """n prompts: one instruction of at least `prefix_tokens` tokens, then a distinct question."""
    rng = random.Random(seed)
    prefix = INSTRUCTION
    while len(tokenizer(prefix)["input_ids"]) < prefix_tokens:
        prefix += INSTRUCTION
    prompts = []
    for i in range(n):
        q = rng.choice(QUESTIONS).format(a=rng.randrange(1000), b=rng.randrange(1000), c=rng.choice("bgrwy"))
        prompts.append(tokenizer(f"{prefix}\nQuestion {i}: {q}\nAnswer:")["input_ids"])
    return prompts


def engine_run(engines: EngineGroup, prompts: list[list[int]], sampling: dict[str, Any], reps: int) -> dict[str, float]:
    """Median tokens/s of `EngineGroup.generate` over `reps` timed runs (after one warm-up run)."""
    engines.chunk_size = -(-len(prompts) // len(engines.engines))  # one chunk per engine
    times, tokens = [], 0
    for rep in range(reps + 1):
        with Timer() as t:
            outputs = engines.generate(prompts, [sampling] * len(prompts), "bench")
        tokens = sum(sum(map(len, o.get("samples", [o["token_ids"]]))) for o in outputs)
        if rep > 0:
            times.append(t.seconds)
    return {"tokens": tokens, "seconds": statistics.median(times), "tokens_per_s": tokens / statistics.median(times)}


def hf_run(
    model_path: str, prompts: list[list[int]], new_tokens: int, batch_size: int, threads: int, reps: int, pad_id: int
) -> dict[str, float]:
    """Median tokens/s of batched greedy Hugging Face `generate` (left-padded batches)."""
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    times, tokens = [], 0
    for rep in range(reps + 1):
        tokens = 0
        with Timer() as t, torch.no_grad():
            for i in range(0, len(prompts), batch_size):
                batch = prompts[i : i + batch_size]
                width = max(map(len, batch))
                ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in batch])
                mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
                out = model.generate(
                    input_ids=ids,
                    attention_mask=mask,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    pad_token_id=pad_id,
                )
                tokens += (out.shape[1] - width) * len(batch)
        if rep > 0:
            times.append(t.seconds)
    return {"tokens": tokens, "seconds": statistics.median(times), "tokens_per_s": tokens / statistics.median(times)}


def run(
    model_path: str,
    num_engines: int,
    num_prompts: int,
    new_tokens: int,
    prefix_tokens: int,
    samples: int,
    reps: int,
    engines: Engines | None = None,
    **engine_settings: Any,
) -> dict[str, Any]:
    """`engines` starts the engines (a fresh `Engines()` by default; its `close` stops what a
    failure left running); `engine_settings` override their settings below (max_model_len: the
    longest prompt plus `new_tokens` by default)."""
    from transformers import AutoTokenizer

    engines = engines or Engines()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = shared_prefix_prompts(tokenizer, num_prompts, prefix_tokens, seed=0)
    greedy = {"temperature": 0.0, "max_tokens": new_tokens, "ignore_eos": True}
    sampled = {"temperature": 1.0, "max_tokens": new_tokens, "ignore_eos": True}
    settings = {
        **dict(
            model_path=model_path,
            dtype="float32",
            max_model_len=max(map(len, prompts)) + new_tokens + 8,
            kv_cache_gib=1.0,
            max_logprobs=21,
            seed=0,
            max_num_seqs=256,
        ),
        **engine_settings,
    }
    result: dict[str, Any] = {
        "prompt_tokens_mean": statistics.mean(map(len, prompts)),
        "num_prompts": num_prompts,
        "new_tokens": new_tokens,
        "num_engines": num_engines,
        "samples": samples,
        "reps": reps,
    }
    # Both sets start at once (start-up is mostly compiling, on one core per engine); each is measured alone.
    with ThreadPoolExecutor(2) as pool:
        uncached, cached = pool.map(
            lambda caching: engines.start(num_engines, enable_prefix_caching=caching, **settings), (False, True)
        )
    try:
        result["prefix_cache_off"] = engine_run(uncached, prompts, greedy, reps)
    finally:
        engines.release(uncached)
    try:
        result["prefix_cache_on"] = engine_run(cached, prompts, greedy, reps)
        few = prompts[: max(1, num_prompts // samples)]
        result["n_in_one_request"] = engine_run(cached, few, {**sampled, "n": samples}, reps)
        result["n_separate_requests"] = engine_run(cached, [p for p in few for _ in range(samples)], sampled, reps)
    finally:
        engines.release(cached)
    result["hf_generate"] = hf_run(model_path, prompts, new_tokens, 64, num_engines, reps, tokenizer.pad_token_id or 0)
    result["ratios"] = {
        "engine_vs_hf": result["prefix_cache_on"]["tokens_per_s"] / result["hf_generate"]["tokens_per_s"],
        "engine_no_cache_vs_hf": result["prefix_cache_off"]["tokens_per_s"] / result["hf_generate"]["tokens_per_s"],
        "prefix_cache_on_vs_off": result["prefix_cache_on"]["tokens_per_s"]
        / result["prefix_cache_off"]["tokens_per_s"],
        "n_in_one_vs_separate": result["n_in_one_request"]["tokens_per_s"]
        / result["n_separate_requests"]["tokens_per_s"],
    }
    return result


def table(results: dict[str, dict[str, Any]]) -> str:
    lines = ["| model | path | tokens/s | ratio |", "| --- | --- | --- | --- |"]
    for model, r in results.items():
        hf = r["hf_generate"]["tokens_per_s"]
        ratios = r["ratios"]
        lines += [
            f"| {model} | Hugging Face generate (batch 64) | {hf:,.0f} | 1.00x |",
            (
                f"| {model} | engines, prefix caching off | {r['prefix_cache_off']['tokens_per_s']:,.0f} "
                f"| {ratios['engine_no_cache_vs_hf']:.2f}x vs HF |"
            ),
            (
                f"| {model} | engines, prefix caching on (default) | {r['prefix_cache_on']['tokens_per_s']:,.0f} "
                f"| {ratios['engine_vs_hf']:.2f}x vs HF, {ratios['prefix_cache_on_vs_off']:.2f}x vs off |"
            ),
            (
                f"| {model} | n={r['samples']} separate requests (T=1) "
                f"| {r['n_separate_requests']['tokens_per_s']:,.0f} | 1.00x |"
            ),
            (
                f"| {model} | n={r['samples']} in one request (T=1) | {r['n_in_one_request']['tokens_per_s']:,.0f} "
                f"| {ratios['n_in_one_vs_separate']:.2f}x vs separate |"
            ),
        ]
    first = next(iter(results.values()))
    note = (
        f"{first['num_prompts']} prompts of about {first['prompt_tokens_mean']:.0f} tokens "
        "sharing one instruction prefix, "
        f"{first['new_tokens']} new tokens each, {first['num_engines']} engine(s), "
        f"median of {first['reps']} runs after a warm-up."
    )
    return note + "\n\n" + "\n".join(lines)
