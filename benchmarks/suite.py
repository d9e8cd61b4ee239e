"""The benchmark suite (`make bench`): every stage of a round against its alternative and its
limit, written to benchmarks/results/*.json and *.md and into docs/performance.md.

    python -m benchmarks.suite                 # the full suite on this machine (about 20 min on 2 CPUs)
    python -m benchmarks.suite --smoke --out D # tiny sizes, to keep the scripts alive (make test)

Figures are ratios or medians taken inside one run: these machines are shared and noisy.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import ray

from benchmarks import loss_memory, round_breakdown, student_training, teacher_generation, weight_sync
from benchmarks.common import Engines, machine
from cdscale.models import resolve_model_path
from cdscale.models.tiny import build_tiny_llama
from cdscale.placement import start_local_ray

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
ALL = "generation,sync,training,loss_memory,round"
SMOKE_BESIDE = {"generation", "sync"}  # the smoke run's second lane, about half of its time on 2 CPUs


def sizes(smoke: bool) -> dict[str, Any]:
    if smoke:
        # Every engine of the smoke run, the round's too, has the round's model and these settings,
        # eager (no torch.compile at start-up: the smoke keeps the scripts alive, it measures
        # nothing), and the sync pushes into the generation benchmark's engine (shared: see `Engines`).
        # One trainer rank each: a rank is a process of its own (its imports and DeepSpeed's set-up
        # are most of what it costs here), and the stack tests run ZeRO across two ranks.
        engine = dict(max_model_len=512, max_num_seqs=512, kv_cache_gib=0.25, enforce_eager=True)
        return {
            "generation": {"tiny": dict(num_prompts=8, new_tokens=8, prefix_tokens=200, samples=2, reps=1, **engine)},
            "sync": {"tiny": dict(num_engines=1, num_ranks=1, zero_stage=3, reps=1, **engine)},
            "training": {"tiny": dict(batch_size=4, steps=3, stages=[3], ranks=[1], prompt_len=16, answer_len=4)},
            "loss_memory": {"tiny": dict(batch_size=2, prompt_len=16, answer_len=4)},
            "round": [
                "data.num_train=64",
                "data.num_eval=8",
                "student.batch_size=16",
                "student.epochs=1",
                "teacher.num_engines=1",
                "teacher.max_new_tokens=64",
                "task.options.max_digits=2",
                "student.num_ranks=1",
                *(f"teacher.{k}={v}" for k, v in engine.items()),
            ],
        }
    return {
        "generation": {
            "tiny": dict(num_prompts=256, new_tokens=64, prefix_tokens=200, samples=8, reps=3),
            "smollm2-135m": dict(num_prompts=32, new_tokens=32, prefix_tokens=200, samples=8, reps=3),
        },
        "sync": {
            "tiny": dict(num_engines=2, num_ranks=2, zero_stage=2, reps=5),
            "smollm2-135m": dict(num_engines=2, num_ranks=2, zero_stage=2, reps=3),
        },
        "training": {
            "tiny": dict(batch_size=64, steps=11, stages=[1, 2, 3], ranks=[1, 2], prompt_len=16, answer_len=8),
            "smollm2-135m": dict(batch_size=4, steps=4, stages=[1, 2, 3], ranks=[1, 2], prompt_len=48, answer_len=16),
        },
        "loss_memory": {"smollm2-135m": dict(batch_size=4, prompt_len=256, answer_len=32)},
        "round": ["data.num_train=8192", "data.num_eval=200", "student.epochs=1"],
    }


def model_folders(tmp: Path, smoke: bool, round_model: str) -> dict[str, Path]:
    """The models the speed benchmarks run on. Their weights do not matter; in smoke runs "tiny"
    is the round's model (a tiny Llama too), so all engines share one compiled graph."""
    if smoke:
        return {"tiny": Path(resolve_model_path(round_model))}
    from cdscale.models.smollm2 import prepare_smollm2

    return {
        "tiny": build_tiny_llama(tmp / "tiny", seed=0),
        "smollm2-135m": Path(prepare_smollm2()),
    }  # tiny: random weights


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument(
        "--doc", type=Path, default=Path("docs/performance.md"), help="updated between its bench markers"
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes; no docs update")
    parser.add_argument(
        "--only", default=ALL, help="a comma-separated subset of " + ALL + " (only their sections of the doc change)"
    )
    parser.add_argument(
        "--round-model", default="tiny-addition", help="a model with the teacher's skill for the round breakdown"
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(","))
    plan = sizes(args.smoke)
    args.out.mkdir(parents=True, exist_ok=True)
    command = (
        "python -m benchmarks.suite"
        + (" --smoke" if args.smoke else "")
        + (f" --only {args.only}" if args.only != ALL else "")
    )
    header = f"Measured {time.strftime('%Y-%m-%d')} on {machine()}, with `{command}`."
    sections: list[tuple[str, str, str]] = []

    def record(name: str, title: str, results: Any, table: Callable[[Any], str]) -> None:
        (args.out / f"{name}.json").write_text(
            json.dumps({"machine": machine(), "date": time.strftime("%Y-%m-%d"), "results": results}, indent=2)
        )
        text = f"{header}\n\n{table(results)}"
        (args.out / f"{name}.md").write_text(text + "\n")
        sections.append((name, title, text))
        print(f"\n## {title}\n\n{text}\n", flush=True)

    engines = Engines(share=args.smoke)
    started_ray = not ray.is_initialized()
    if started_ray:  # engines and trainers take turns on the cores, as in a run
        start_local_ray(num_cpus=8, include_dashboard=False)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            models = model_folders(Path(tmp), args.smoke, args.round_model)

            def run(chosen: set[str]) -> None:
                if "generation" in chosen:
                    results = {
                        m: teacher_generation.run(
                            str(models[m]), num_engines=2 if not args.smoke else 1, engines=engines, **kw
                        )
                        for m, kw in plan["generation"].items()
                    }
                    record("teacher_generation", "Teacher generation", results, teacher_generation.table)
                if "sync" in chosen:
                    results = {
                        m: weight_sync.run(str(models[m]), engines=engines, **kw) for m, kw in plan["sync"].items()
                    }
                    record("weight_sync", "Weight sync", results, weight_sync.table)
                if "training" in chosen:
                    results = {}
                    for m, kw in plan["training"].items():
                        vocab = json.loads((models[m] / "config.json").read_text())["vocab_size"]
                        records = student_training.make_records(
                            kw["batch_size"] * kw["steps"], vocab, kw["prompt_len"], kw["answer_len"], 20, 0
                        )
                        results[m] = student_training.run_ranks(
                            models[m], records, kw["batch_size"], kw["steps"], kw["stages"], kw["ranks"]
                        )
                    record("student_training_cpu", "Student training", results, student_training.ranks_table)
                if "loss_memory" in chosen:
                    results = {m: loss_memory.run(models[m], **kw) for m, kw in plan["loss_memory"].items()}
                    record(
                        "loss_memory",
                        "Loss memory: answer positions only against full logits",
                        results,
                        loss_memory.table,
                    )
                if "round" in chosen:
                    result = round_breakdown.run(
                        resolve_model_path(args.round_model), Path(tmp) / "runs", plan["round"]
                    )
                    record("round_breakdown", "Round breakdown", result, round_breakdown.table)

            if (
                args.smoke
            ):  # measures nothing: two lanes side by side; the round's in this thread, where it can catch SIGTERM
                with ThreadPoolExecutor(1) as pool:
                    beside = pool.submit(run, only & SMOKE_BESIDE)
                    run(only - SMOKE_BESIDE)
                    beside.result()
            else:  # a measurement has the machine to itself: one section after another
                run(only)
    finally:
        engines.close()
    if started_ray:
        ray.shutdown()
    if not args.smoke:
        update_doc(args.doc, sections)
    return 0


def update_doc(doc: Path, sections: list[tuple[str, str, str]]) -> None:
    """Replace each measured section in the generated part of the doc (between the
    markers), keeping the others and their dates; the rest of the doc is hand-written."""
    text = doc.read_text() if doc.is_file() else f"# Performance\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{doc}: no {BEGIN} ... {END} markers to write the results between")
    before, rest = text.split(BEGIN, 1)
    generated, after = rest.split(END, 1)
    for name, title, body in sections:
        start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
        block = f"{start}\n### {title}\n\n{body}\n{end}"
        if start in generated and end in generated:
            head, tail = generated.split(start, 1)
            generated = head + block + tail.split(end, 1)[1]
        else:
            generated = generated.rstrip("\n") + "\n\n" + block + "\n"
    doc.write_text(f"{before}{BEGIN}{generated}{END}{after}")


if __name__ == "__main__":
    sys.exit(main())
