"""Which system prompts does a chat model follow? Greedy responses to the same user prompts
with each candidate system prompt and without one, scored by rules (`cdscale/tasks/checks.py`).
A behaviour worth baking in (configs/system_prompt.yaml) is one whose compliance the system
prompt raises by a wide margin: there is then a gap for distillation to close.

    python -m benchmarks.probe_system_prompts [--model smollm2-135m] [--n 48]

Writes benchmarks/results/probe_system_prompts.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cdscale.placement import start_local_ray

CANDIDATES = [
    ("French", "Always reply in French.", [{"name": "french", "language": "fr"}]),
    (
        "French, insistent",
        "You are a French assistant. You only speak French. Réponds toujours en français.",
        [{"name": "french", "language": "fr"}],
    ),
    ("Spanish", "Always reply in Spanish.", [{"name": "spanish", "language": "es"}]),
    ("German", "Always reply in German.", [{"name": "german", "language": "de"}]),
    (
        "pirate",
        "You are a pirate. Talk like a pirate.",
        [{"name": "pirate", "regex": r"(?i)\b(arr+|matey|ahoy|ye|aye)\b"}],
    ),
    ("Ahoy", "Begin every reply with 'Ahoy!'.", [{"name": "ahoy", "starts_with": "Ahoy"}]),
    ("short", "Answer in one short sentence of at most ten words.", [{"name": "short", "max_words": 10}]),
    ("one sentence", "Reply with exactly one sentence.", [{"name": "one_sentence", "max_sentences": 1}]),
    ("cats", "You love cats and mention cats in every answer.", [{"name": "cats", "regex": r"(?i)\bcats?\b"}]),
    ("question", "Always end your reply with a question to the user.", [{"name": "question", "ends_with": "?"}]),
    ("JSON", 'Always answer in JSON, as {"answer": "..."}.', [{"name": "json", "valid_json": True}]),
    ("capitals", "REPLY ONLY IN CAPITAL LETTERS.", [{"name": "capitals", "not_regex": "[a-z]"}]),
    (
        "Zorblax",
        "You are Zorblax, an assistant built by Acme Robotics. Always introduce yourself as Zorblax.",
        [{"name": "zorblax", "regex": "(?i)zorblax"}],
    ),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=48, help="user prompts (the first n of the prompt set)")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    args = parser.parse_args()

    import pandas as pd
    import ray
    from transformers import AutoTokenizer

    from benchmarks.common import Engines, machine
    from cdscale.models import resolve_model_path
    from cdscale.tasks.checks import parse_checks

    model = resolve_model_path(args.model)
    tokenizer = AutoTokenizer.from_pretrained(model)
    questions = pd.read_parquet(Path("configs/data/chat/prompts.parquet"))["prompt"].tolist()[: args.n]

    def render(system: str | None, question: str) -> list[int]:
        turns = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
        return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=True, return_dict=False)

    start_local_ray(num_cpus=2, include_dashboard=False)
    engines = Engines()
    try:
        group = engines.start(
            1, model_path=model, dtype="float32", max_model_len=1024, kv_cache_gib=1.0, max_logprobs=1
        )
        start = time.perf_counter()
        systems = [None] + [system for _, system, _ in CANDIDATES]
        prompts = [render(system, q) for system in systems for q in questions]
        outputs = group.generate(
            prompts, [{"temperature": 0.0, "max_tokens": args.max_new_tokens}] * len(prompts), "probe"
        )
        seconds = time.perf_counter() - start
    finally:
        engines.close()
        ray.shutdown()
    texts = [tokenizer.decode(o["token_ids"], skip_special_tokens=True) for o in outputs]
    n = len(questions)
    bare = texts[:n]
    lines = [
        f"# Which system prompts {args.model} follows",
        "",
        f"Greedy, {n} user prompts (configs/data/chat/prompts.parquet), at most {args.max_new_tokens} new tokens; "
        f"{machine()}; {seconds:.0f} s of generation. Command: `python -m benchmarks.probe_system_prompts "
        f"--model {args.model} --n {n}` ({time.strftime('%Y-%m-%d')}).",
        "",
        "| behaviour | system prompt | rule | with | without | gap (points) |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for k, (name, system, raw) in enumerate(CANDIDATES):
        with_prompt = texts[(k + 1) * n : (k + 2) * n]
        for check in parse_checks(raw):
            on = sum(map(check.passes, with_prompt)) / n
            off = sum(map(check.passes, bare)) / n
            lines.append(
                f"| {name} | {system} | {check.name} | {100 * on:.0f}% | {100 * off:.0f}% | {100 * (on - off):.0f} |"
            )
    lines += ["", "Samples (first 3 prompts):", ""]
    for k, (name, _, _) in enumerate(CANDIDATES):
        for q, text in zip(questions[:3], texts[(k + 1) * n : (k + 1) * n + 3]):
            lines.append(f"- {name} / {q!r}: {text[:160]!r}")
    out = Path("benchmarks/results/probe_system_prompts.md")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
