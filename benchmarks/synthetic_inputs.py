"""Synthetic inputs with and without the stop at the first line break: the four operations of
configs/instructions.yaml on SmolLM2-135M-Instruct, one engine, the same seeds on both sides.

    python -m benchmarks.synthetic_inputs [--num-train 48]

Only a continuation's first line becomes a candidate input, so the engines stop at it
(`stop_token_ids`: every token whose text holds a line break); before, each continuation ran
on to `synthetic_max_new_tokens`. Not part of `benchmarks.suite`: it measures that choice.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import random
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-train", type=int, default=48, help="inputs wanted per operation")
    args = parser.parse_args(argv)

    from transformers import AutoTokenizer

    from cdscale.config import load_config, resolve_stages
    from cdscale.inputs import build_tasks
    from cdscale.models.smollm2 import prepare_smollm2
    from cdscale.placement import start_local_ray
    from cdscale.teacher import synthetic_inputs
    from cdscale.teacher.engine import EngineSettings
    from cdscale.teacher.group import EngineGroup

    stages = resolve_stages(load_config(str(ROOT / "configs" / "instructions.yaml")))
    ops = [dataclasses.replace(op, num_train=args.num_train) for stage in stages for op in stage.operations]
    tasks = build_tasks(stages)
    model = str(prepare_smollm2())
    tokenizer = AutoTokenizer.from_pretrained(model)
    start_local_ray(num_cpus=2, include_dashboard=False)
    engines = EngineGroup(EngineSettings(model, "float32", 512, 0.5, 21, enforce_eager=True), timeout_s=900).start(1)
    generate = engines.generate
    generate([[1, 2, 3]], [{"temperature": 0.0, "max_tokens": 8}], "warm-up")
    for label, stop_ids in (("stop at the first line break", None), ("sample to the token cap", [])):
        tokens = []

        def counted(*a, tokens=tokens, **kw):
            outputs = generate(*a, **kw)
            tokens.append(sum(len(o["token_ids"]) for o in outputs))
            return outputs

        jobs = [(tasks[op.name], op, random.Random(f"0-synthetic-0-{op.name}")) for op in ops]
        with contextlib.ExitStack() as patched:
            patched.enter_context(mock.patch.object(engines, "generate", counted))
            if stop_ids is not None:
                patched.enter_context(
                    mock.patch.object(synthetic_inputs, "line_break_token_ids", lambda _, ids=stop_ids: ids)
                )
            start = time.perf_counter()
            made = synthetic_inputs.synthesize_inputs(engines, tokenizer, jobs, label)
            seconds = time.perf_counter() - start
        kept = sum(len(inputs) for inputs, _ in made)
        asked = sum(counts["generated"] for _, counts in made)
        print(
            f"{label}: {seconds:.1f} s, {len(tokens)} passes, {asked} continuations, {sum(tokens)} tokens "
            f"({sum(tokens) / asked:.1f} per continuation), {kept} inputs kept of {len(ops) * args.num_train} wanted"
        )
    engines.kill()


if __name__ == "__main__":
    main()
