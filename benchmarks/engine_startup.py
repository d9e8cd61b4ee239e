"""Engine start-up and decode speed: torch.compile with an empty compile cache, with a warm one,
and eager (`teacher.enforce_eager`). One engine of a tiny Llama made in code, on this machine.

    python -m benchmarks.engine_startup

Not part of `benchmarks.suite`: it measures the choice behind the tests' eager engines.
"""

from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path


def main() -> None:
    os.environ["VLLM_CACHE_ROOT"] = tempfile.mkdtemp(prefix="vllm-cache-")  # an empty compile cache

    from cdscale.models.tiny import build_tiny_llama
    from cdscale.placement import start_local_ray
    from cdscale.teacher.engine import EngineSettings
    from cdscale.teacher.group import EngineGroup

    model = str(build_tiny_llama(Path(tempfile.mkdtemp()) / "tiny", seed=0))
    start_local_ray(num_cpus=2, include_dashboard=False)
    prompts = [[random.Random(i).randrange(3, 60) for _ in range(100)] for i in range(64)]
    sampled = {"temperature": 1.0, "max_tokens": 64, "ignore_eos": True}
    for label, eager in (("compiled, empty cache", False), ("compiled, warm cache", False), ("eager", True)):
        settings = EngineSettings(model, "float32", 512, 0.25, 21, enforce_eager=eager)
        start = time.perf_counter()
        group = EngineGroup(settings, timeout_s=900, chunk_size=64).start(1)
        started = time.perf_counter() - start
        group.generate(prompts[:4], [{"temperature": 0.0, "max_tokens": 8}] * 4, "warm-up")
        start = time.perf_counter()
        outputs = group.generate(prompts, [sampled] * len(prompts), "decode")
        seconds = time.perf_counter() - start
        tokens = sum(len(o["token_ids"]) for o in outputs)
        print(f"{label}: start-up {started:.1f} s, decode {tokens / seconds:.0f} tokens/s ({tokens} tokens)")
        group.kill()


if __name__ == "__main__":
    main()
