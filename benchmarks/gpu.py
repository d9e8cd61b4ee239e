"""The GPU machine's benchmarks, with no Ray or vLLM needed there: student training
(DeepSpeed ZeRO-1/2/3 against plain AdamW, one rank, and the ZeRO export against an
in-memory copy) and the loss memory (answer positions only against full logits), for the
SmolLM2-135M shape and a 1.2B shape with random weights.

    python -m benchmarks.gpu --out DIR
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from benchmarks import loss_memory, student_training
from benchmarks.common import machine


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--shapes", default="smollm2-shape,1b-shape")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    shapes = args.shapes.split(",")
    for shape in shapes:
        student_training.main(["--out", str(args.out), "--model", shape, "--dtype", "bfloat16", "--steps", "12"])
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for shape in shapes:
            model_dir = student_training.make_model(shape, Path(tmp) / shape, "float32")
            results[shape] = loss_memory.run(model_dir, batch_size=8, prompt_len=512, answer_len=64)
    header = f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, with `python -m benchmarks.gpu`."
    (args.out / "loss_memory_gpu.json").write_text(json.dumps({"machine": machine(), "results": results}, indent=2))
    (args.out / "loss_memory_gpu.md").write_text(f"{header}\n\n{loss_memory.table(results)}\n")
    print(loss_memory.table(results))
    assert torch.cuda.is_available(), "this script is meant for a GPU machine"


if __name__ == "__main__":
    main()
