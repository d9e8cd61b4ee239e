"""`cdscale report RUN_DIR...`: the runs' results as a markdown table in the paper's layout
and PNG plots, from what each run directory holds (summary.json, metrics.jsonl).

    report.md             one row per (run, operation): teacher with its context, student
                          before, student after each stage, inference tokens and their ratio
    accuracy.png          student accuracy per operation after each round (round -1: before), a panel per run
    loss.png              training loss per step, rounds one after another
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The run's summary and events: a finished run's summary.json, or for one under way,
    stopped or crashed, its last commit's summary and the events up to that commit. Only
    committed files are read (a live run's metrics.jsonl may end in a line being written)."""
    from cdscale.checkpoint import load_latest_state, read_json
    from cdscale.metrics import committed_lines, parse_event

    summary_file, metrics_file = run_dir / "summary.json", run_dir / "metrics.jsonl"
    lines = metrics_file.read_text(errors="replace").splitlines() if metrics_file.is_file() else []
    if summary_file.is_file():
        summary = read_json(summary_file, "it is rewritten when the run finishes; resume the run to write it again")
    else:
        committed = load_latest_state(run_dir)
        if committed is None:
            raise FileNotFoundError(f"{run_dir}: no summary.json and no committed state; is it a cdscale run?")
        summary, lines = committed[1]["summary"], committed_lines(lines, committed[0].name)
    return summary, [e for e in map(parse_event, lines) if e is not None]


def _pct(metrics: dict[str, Any] | None, rule: str | None = None) -> str:
    value = None if metrics is None else metrics.get("rules", {}).get(rule) if rule else metrics["accuracy"]
    return "-" if value is None else f"{100 * value:.1f}"


def results_table(runs: dict[str, dict[str, Any]]) -> str:
    """Accuracy (%) per run and operation, the columns of the paper's tables; an operation
    with rules (a chat task's checks) has a row per rule, its compliance (%)."""
    stage_names = list(dict.fromkeys(name for s in runs.values() for name in s.get("after_stage", {})))
    head = ["run", "operation", "teacher (with context)", "student before"]
    head += [f"after {name}" for name in stage_names] if len(stage_names) > 1 else ["student after"]
    head += ["tokens per answer: teacher / student", "token ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run, s in runs.items():
        ops = list(dict.fromkeys([*s.get("teacher", {}), *s.get("student_after", {})]))
        for op in ops:
            teacher, last = s.get("teacher", {}).get(op), s.get("student_after", {}).get(op)
            afters = [s.get("after_stage", {}).get(name, {}).get(op) for name in stage_names] or [last]
            tokens, ratio = "-", "-"
            if teacher and last:
                tokens = f"{teacher['tokens_per_answer']:.1f} / {last['tokens_per_answer']:.1f}"
                ratio = f"{teacher['tokens_per_answer'] / last['tokens_per_answer']:.1f}x"
            before = s.get("student_before", {}).get(op)
            # A chat operation's rules get a row each (compliance in %); its gold accuracy a row when it has one.
            rules = list(dict.fromkeys(name for m in (teacher, before, last) if m for name in m.get("rules", {})))
            has_gold = any(m and m["accuracy"] is not None for m in (teacher, before, last))
            for rule in ([None] if has_gold or not rules else []) + rules:
                label = op if rule is None else f"{op} [rule: {rule}]"
                cells = [_pct(m, rule) for m in (teacher, before, *afters)]
                lines.append("| " + " | ".join([run, label, *cells, tokens, ratio]) + " |")
    return "\n".join(lines)


def kl_table(runs: dict[str, dict[str, Any]]) -> str:
    """Per run and open-ended operation: the context gap, KL(teacher with the context || student
    without) before and after and the fraction closed, and drift, KL(before || after) on prompts
    unrelated to the context."""

    def cell(value: float | None, pattern: str = "{:.4f}") -> str:
        return "-" if value is None else pattern.format(value)

    head = ["run", "operation", "context gap before", "context gap after", "gap closed", "drift after"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run, s in runs.items():
        gaps, drifts = s.get("context_gap", {}), s.get("drift", {})
        for op in dict.fromkeys([*gaps, *drifts]):
            gap, drift = gaps.get(op, {}), drifts.get(op, {})
            row = [run, op, cell(gap.get("before")), cell(gap.get("after")), cell(gap.get("closed"), "{:.0%}")]
            lines.append("| " + " | ".join([*row, cell(drift.get("after"))]) + " |")
    return "\n".join(lines)


def _axes(rows: int = 1) -> Any:
    """A figure of `rows` panels, one above the other."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(rows, 1, figsize=(9, 3.2 * rows), squeeze=False)
    for ax in axes[:, 0]:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig, list(axes[:, 0])


def _save(fig: Any, axes: list[Any], path: Path) -> None:
    import matplotlib.pyplot as plt

    for ax in axes:  # legends beside the panels, so many lines do not hide the data
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_accuracy(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """One panel per run, one line per operation."""
    fig, axes = _axes(len(runs))
    for ax, (run, events) in zip(axes, runs.items()):
        curves: dict[str, list[tuple[int, float]]] = {}
        for e in events:
            if e["event"] != "eval" or "operation" not in e:
                continue
            if e.get("accuracy") is None:  # no gold answers: the rules table has its results
                continue
            if e["name"] == "student_before":
                curves.setdefault(e["operation"], []).append((-1, e["accuracy"]))
            elif e["name"].startswith("student_after_round_"):
                curves.setdefault(e["operation"], []).append((int(e["name"].rsplit("_", 1)[1]), e["accuracy"]))
        for op, points in curves.items():
            points = sorted(dict(points).items())  # a resumed run may have evaluated a round twice: keep the last
            ax.plot([r for r, _ in points], [100 * a for _, a in points], marker="o", label=op)
        ax.set_xlabel("after round (-1: before distillation)")
        ax.set_ylabel("student accuracy (%)")
        ax.set_ylim(-2, 102)
        ax.set_title(f"{run}: student accuracy, without context")
    _save(fig, axes, path)


def plot_loss(runs: dict[str, list[dict[str, Any]]], path: Path) -> None:
    fig, [ax] = _axes()
    for run, events in runs.items():
        # One point per (round, step), the last logged (a resumed run may log a step again).
        losses = {(e["round"], e["step"]): e["loss"] for e in events if e["event"] == "train"}
        ax.plot(range(len(losses)), [losses[k] for k in sorted(losses)], label=run, linewidth=1)
    ax.set_xlabel("optimizer step (rounds one after another)")
    ax.set_ylabel("distillation loss")
    ax.set_yscale("log")
    ax.set_title("Training loss")
    _save(fig, [ax], path)


def write_report(run_dirs: list[Path], out_dir: Path) -> Path:
    """report.md, accuracy.png and loss.png in out_dir; returns the markdown's path."""
    summaries, events = {}, {}
    for run_dir in run_dirs:
        name = run_dir.resolve().name
        if name in summaries:
            name = str(run_dir)
        summaries[name], events[name] = load_run(run_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_accuracy(events, out_dir / "accuracy.png")
    plot_loss(events, out_dir / "loss.png")
    sources = "\n".join(f"- `{name}`: {run_dir}" for name, run_dir in zip(summaries, run_dirs))
    text = (
        "# cdscale report\n\nAccuracy (a rule: its compliance) in % on each operation's held-out inputs (greedy).\n\n"
        f"{results_table(summaries)}\n\n"
        + (
            f"KL per token on held-out responses (evaluation without gold):\n\n{kl_table(summaries)}\n\n"
            if any("context_gap" in s or "drift" in s for s in summaries.values())
            else ""
        )
        + f"![student accuracy](accuracy.png)\n\n![training loss](loss.png)\n\nRuns:\n{sources}\n"
    )
    (out_dir / "report.md").write_text(text)
    return out_dir / "report.md"
