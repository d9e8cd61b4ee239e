"""`cdscale report RUN_DIR...`: the runs' results as a markdown table in the paper's layout
and PNG plots, from what each run directory holds (summary.json, metrics.jsonl).

    report.md             one row per (run, operation): teacher with its context, student
                          before, student after each stage, inference tokens and their ratio;
                          for addition, the same by operand length
    accuracy.png          a panel per operation: teacher, before, after each intermediate round
                          and after, as grouped bars, the runs side by side
    by_length.png         addition: accuracy after distillation by the longer operand's digits
    learning_curve.png    held-out accuracy against example passes (runs evaluated during a
                          round, `eval.every_refreshes`, or trained to `student.until_accuracy`)
    loss.png              training loss per step, rounds one after another
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)
_SUM = re.compile(r"(\d(?: \d)*) \+ (\d(?: \d)*)")


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


def _phases(runs: dict[str, dict[str, Any]]) -> list[tuple[str, Any]]:
    """(label, summary -> {operation: metrics}) for teacher, before and after: after each stage
    when a run has more than one."""
    stage_names = list(dict.fromkeys(name for s in runs.values() for name in s.get("after_stage", {})))
    phases = [("teacher", lambda s: s.get("teacher", {})), ("before", lambda s: s.get("student_before", {}))]
    if len(stage_names) > 1:
        return phases + [(f"after {n}", lambda s, n=n: s.get("after_stage", {}).get(n, {})) for n in stage_names]
    return phases + [("after", lambda s: s.get("student_after", {}))]


_TABLE_HEAD = {"teacher": "teacher (with context)", "before": "student before", "after": "student after"}


def results_table(runs: dict[str, dict[str, Any]]) -> str:
    """Accuracy (%) per run and operation, the columns of the paper's tables; an operation
    with rules (a chat task's checks) has a row per rule, its compliance (%)."""
    phases = _phases(runs)
    head = ["run", "operation", *(_TABLE_HEAD.get(label, label) for label, _ in phases)]
    head += ["tokens per answer: teacher / student", "token ratio"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run, s in runs.items():
        ops = list(dict.fromkeys([*s.get("teacher", {}), *s.get("student_after", {})]))
        for op in ops:
            metrics = [get(s).get(op) for _, get in phases]
            teacher, last = metrics[0], s.get("student_after", {}).get(op)
            tokens, ratio = "-", "-"
            if teacher and last:
                tokens = f"{teacher['tokens_per_answer']:.1f} / {last['tokens_per_answer']:.1f}"
                ratio = f"{teacher['tokens_per_answer'] / last['tokens_per_answer']:.1f}x"
            # A chat operation's rules get a row each (compliance in %); its gold accuracy a row when it has one.
            rules = list(dict.fromkeys(name for m in metrics if m for name in m.get("rules", {})))
            has_gold = any(m and m["accuracy"] is not None for m in metrics)
            for rule in ([None] if has_gold or not rules else []) + rules:
                label = op if rule is None else f"{op} [rule: {rule}]"
                cells = [_pct(m, rule) for m in metrics]
                lines.append("| " + " | ".join([run, label, *cells, tokens, ratio]) + " |")
    return "\n".join(lines)


def digit_counts(problem: str) -> tuple[int, int] | None:
    """(shorter, longer) operand length of a spaced sum such as '2 9 + 5 7 1'; None for
    another kind of input."""
    match = _SUM.fullmatch(problem.strip())
    return None if match is None else tuple(sorted(len(g.split()) for g in match.groups()))  # type: ignore[return-value]


def by_length(rows: list[dict[str, Any]]) -> dict[tuple[int, int], list[float]] | None:
    """An evaluation's scores grouped by operand lengths; None unless every input is a sum."""
    groups: dict[tuple[int, int], list[float]] = defaultdict(list)
    for row in rows:
        key = digit_counts(str(row.get("input")))
        if key is None or not isinstance(row.get("score"), (int, float)):
            return None
        groups[key].append(row["score"])
    return dict(sorted(groups.items())) or None


def _eval_rows(run_dir: Path, op: str, label: str) -> list[dict[str, Any]]:
    """An evaluation file's rows; none (and a warning naming the line) when it is damaged."""
    path = run_dir / "eval" / op / f"{label}.jsonl"
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as err:
            log.warning("%s:%d: not a JSON line (%s); its file is left out of the report", path, number, err)
            return []
        if not isinstance(rows[-1], dict):
            log.warning("%s:%d: not a JSON object; its file is left out of the report", path, number)
            return []
    return rows


def length_results(run_dir: Path) -> dict[str, dict[str, dict[tuple[int, int], list[float]]]]:
    """{operation: {teacher / before / after: scores by operand lengths}} for a run's addition
    operations, from its evaluation files (after: the last round's)."""
    out = {}
    for op_dir in sorted(p for p in (run_dir / "eval").glob("*") if p.is_dir()):
        rounds = [int(f.stem.rsplit("_", 1)[1]) for f in op_dir.glob("student_after_round_*.jsonl")]
        labels = {"teacher": "teacher", "before": "student_before"}
        if rounds:
            labels["after"] = f"student_after_round_{max(rounds)}"
        groups = {phase: by_length(_eval_rows(run_dir, op_dir.name, label)) for phase, label in labels.items()}
        if any(g is not None for g in groups.values()):
            out[op_dir.name] = {phase: g for phase, g in groups.items() if g is not None}
    return out


def length_table(runs: dict[str, dict[str, dict[tuple[int, int], list[float]]]]) -> str:
    """Accuracy (%) by operand lengths, a row per (run, operation, lengths)."""
    head = ["run", "operation", "digits", "problems", "teacher", "before", "after"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for run, ops in runs.items():
        for op, phases in ops.items():
            for key in sorted({k for groups in phases.values() for k in groups}):
                scores = [phases.get(p, {}).get(key) for p in ("teacher", "before", "after")]
                n = max(len(v) for v in scores if v)
                cells = ["-" if not v else f"{100 * sum(v) / len(v):.1f}" for v in scores]
                lines.append("| " + " | ".join([run, op, f"{key[0]}+{key[1]}", str(n), *cells]) + " |")
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


def _intermediate_rounds(events: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{operation: {round: accuracy}} of the student after each round that is not its stage's
    last (a stage's last round is its "after" bar), from the run's evaluation events."""
    stage_of = {e["round"]: e["stage"] for e in events if e["event"] == "round_start"}
    last = {stage: max(r for r, s in stage_of.items() if s == stage) for stage in stage_of.values()}
    rounds: dict[str, dict[int, float]] = defaultdict(dict)
    for e in events:
        if e["event"] == "eval" and e.get("accuracy") is not None and e["name"].startswith("student_after_round_"):
            r = int(e["name"].rsplit("_", 1)[1])
            if r in stage_of and r != last[stage_of[r]]:
                rounds[e["operation"]][r] = e["accuracy"]  # a resumed run may evaluate a round twice: the last
    return dict(rounds)


def accuracy_bars(
    runs: dict[str, dict[str, Any]], events: dict[str, list[dict[str, Any]]]
) -> tuple[list[str], dict[str, dict[str, list[float | None]]]]:
    """The bar groups of accuracy.png: the labels (teacher, before, after each intermediate round
    of a multi-round run, after) and {operation with gold answers: {run: accuracy per label}}."""
    phases = _phases(runs)
    rounds = {run: _intermediate_rounds(events.get(run, [])) for run in runs}
    round_numbers = sorted({r for ops in rounds.values() for by_round in ops.values() for r in by_round})
    labels = [phases[0][0], phases[1][0], *(f"after round {r}" for r in round_numbers), *(p[0] for p in phases[2:])]
    bars: dict[str, dict[str, list[float | None]]] = {}
    for op in dict.fromkeys(op for s in runs.values() for _, get in phases for op in get(s)):
        for run, s in runs.items():  # every run, with or without op: a run keeps its place and colour
            values = [(get(s).get(op) or {}).get("accuracy") for _, get in phases]
            values[2:2] = [rounds[run].get(op, {}).get(r) for r in round_numbers]
            bars.setdefault(op, {})[run] = values
    gold = {op for op, by_run in bars.items() if any(v is not None for vs in by_run.values() for v in vs)}
    return labels, {op: by_run for op, by_run in bars.items() if op in gold}


def plot_accuracy(runs: dict[str, dict[str, Any]], events: dict[str, list[dict[str, Any]]], path: Path) -> None:
    """A panel per operation with gold answers: `accuracy_bars`' groups, one bar per run, so a
    distillation run stands beside its baselines."""
    labels, bars = accuracy_bars(runs, events)
    fig, axes = _axes(max(1, len(bars)))
    width = 0.8 / len(runs)
    for ax, (op, by_run) in zip(axes, bars.items()):
        for j, (run, values) in enumerate(by_run.items()):
            offset = (j - (len(runs) - 1) / 2) * width
            drawn = [(i + offset, 100 * a) for i, a in enumerate(values) if a is not None]
            bar = ax.bar([x for x, _ in drawn], [a for _, a in drawn], width, label=run)
            ax.bar_label(bar, fmt="%.1f", fontsize=7)  # a 0% bar has no height to see
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 108)
        ax.set_title(f"{op}: the teacher with its context, the student without")
    if not bars:  # rules only (a chat task): report.md has their compliance
        axes[0].text(0.5, 0.5, "no operation with gold answers", ha="center", transform=axes[0].transAxes)
        axes[0].bar([], [], label="-")
    _save(fig, axes, path)


def plot_by_length(runs: dict[str, dict[str, dict[str, dict[tuple[int, int], list[float]]]]], path: Path) -> None:
    """Addition: accuracy after distillation (and the teacher's, dashed) by the longer
    operand's digit count, a line per run and operation."""
    fig, [ax] = _axes()
    for run, ops in runs.items():
        for op, phases in ops.items():
            for phase, style in (("after", "-"), ("teacher", ":")):
                longer: dict[int, list[float]] = defaultdict(list)
                for (_, n), scores in phases.get(phase, {}).items():
                    longer[n] += scores
                xs = sorted(longer)
                label = f"{run}, {op}: " + ("student after" if phase == "after" else "teacher")
                ax.plot(xs, [100 * sum(longer[n]) / len(longer[n]) for n in xs], style, marker="o", label=label)
    ax.set_xlabel("digits of the longer operand")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Addition by operand length")
    _save(fig, [ax], path)


def learning_curves(
    runs: dict[str, dict[str, Any]], batch_sizes: dict[str, int]
) -> list[tuple[str, str, list[int], list[float]]]:
    """(label, line style, example passes, accuracy %) per run and operation: the evaluations
    inside a round (`eval.every_refreshes`, the summary's curve; solid), ending at the accuracy
    after the run's last round, and the `student.until_accuracy` checks (dashed)."""
    lines = []
    for run, s in runs.items():
        for key, style, what in (("curve", "-", "held-out"), ("validation", "--", "validation")):
            for op, points in s.get(key, {}).items():
                points = sorted(points, key=lambda p: (p["round"], p["step"]))
                last, after = points[-1]["round"], s.get("student_after", {}).get(op)
                if key == "curve" and after and f"round_{last + 1}" not in s and f"round_{last}" in s:
                    points.append({"round": last, "step": s[f"round_{last}"]["steps"], "accuracy": after["accuracy"]})
                xs = [p["step"] * batch_sizes[run] for p in points]
                lines.append((f"{run}: {op} ({what})", style, xs, [100 * p["accuracy"] for p in points]))
    return lines


def plot_learning_curve(runs: dict[str, dict[str, Any]], batch_sizes: dict[str, int], path: Path) -> None:
    """`learning_curves`: held-out accuracy against example passes."""
    fig, [ax] = _axes()
    for label, style, xs, ys in learning_curves(runs, batch_sizes):
        ax.plot(xs, ys, style, marker="o", label=label)
    ax.set_xlabel("example passes in the round (optimizer steps x batch size)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Learning curve")
    _save(fig, [ax], path)


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
    """report.md and the plots of the module's docstring in out_dir (by_length.png for
    addition runs, learning_curve.png for runs with evaluations during training); returns report.md."""
    import yaml

    summaries, events, lengths, batch_sizes = {}, {}, {}, {}
    for run_dir in run_dirs:
        name = run_dir.resolve().name
        if name in summaries:
            name = str(run_dir)
        summaries[name], events[name] = load_run(run_dir)
        lengths[name] = length_results(run_dir)
        config = run_dir / "config.yaml"
        student = yaml.safe_load(config.read_text()).get("student", {}) if config.is_file() else {}
        batch_sizes[name] = student.get("batch_size", 1)
    lengths = {run: ops for run, ops in lengths.items() if ops}
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_accuracy(summaries, events, out_dir / "accuracy.png")
    plot_loss(events, out_dir / "loss.png")
    figures = ["![student accuracy](accuracy.png)"]
    if lengths:
        plot_by_length(lengths, out_dir / "by_length.png")
        figures.append("![addition by operand length](by_length.png)")
    if any(s.get("validation") or s.get("curve") for s in summaries.values()):
        plot_learning_curve(summaries, batch_sizes, out_dir / "learning_curve.png")
        figures.append("![learning curve](learning_curve.png)")
    figures.append("![training loss](loss.png)")
    sources = "\n".join(f"- `{name}`: {run_dir}" for name, run_dir in zip(summaries, run_dirs))
    text = (
        "# cdscale report\n\nAccuracy (a rule: its compliance) in % on each operation's held-out inputs (greedy).\n\n"
        f"{results_table(summaries)}\n\n"
        + (
            f"KL per token on held-out responses (evaluation without gold):\n\n{kl_table(summaries)}\n\n"
            if any("context_gap" in s or "drift" in s for s in summaries.values())
            else ""
        )
        + (f"Addition by operand length (%):\n\n{length_table(lengths)}\n\n" if lengths else "")
        + "\n\n".join(figures)
        + f"\n\nRuns:\n{sources}\n"
    )
    (out_dir / "report.md").write_text(text)
    return out_dir / "report.md"
