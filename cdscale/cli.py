"""The `cdscale` command.

cdscale run [--config FILE] [section.field=value ...]   a distillation run
cdscale run --resume RUN_DIR [run.ray_address=...]      continue it from its last committed state
cdscale bootstrap                                        prepare the tiny teacher model
cdscale prepare-model smollm2-135m                      convert packaged real weights
cdscale config [--config FILE] [overrides ...]          print the resolved config, explained
cdscale report RUN_DIR... [--out DIR]                   results table (markdown) and plots of runs
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from cdscale.config import Config, ConfigError, RunDirDamaged, RunFailed, describe, load_config

log = logging.getLogger("cdscale")


def _log_to_console() -> None:
    """The run's progress lines on stdout as `[cdscale] ...` (the `cdscale` logger; a library
    user configures logging as they like)."""
    for handler in [h for h in log.handlers if getattr(h, "cdscale_console", False)]:
        log.removeHandler(handler)  # one per process, on the stdout of this call
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[cdscale] %(message)s"))
    handler.cdscale_console = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.INFO)


RESUMABLE_WITH = (
    "run.ray_address",
    "run.dashboard",
    "run.dashboard_host",
    "run.metrics_export_port",
    "run.timeout_s",
    "run.save_by_s",
    "sync.transport",
    "sync.bucket_mb",  # how the weights travel, not what they are
)


def resume_config(run_dir: str, overrides: list[str]) -> Config:
    """The config of `cdscale run --resume run_dir [overrides]`: the one saved in the run
    directory, with only the settings of where the run goes on changed."""
    # Where the run goes on may change (another allocation, another cluster); what it computes may not.
    fixed = [o for o in overrides if o.split("=", 1)[0] not in RESUMABLE_WITH]
    if fixed:
        raise ConfigError(
            f"--resume continues a run with the config saved in its directory; drop {fixed} "
            f"(allowed with --resume: {', '.join(RESUMABLE_WITH)})"
        )
    folder = Path(run_dir).resolve()
    config_file = folder / "config.yaml"
    if not config_file.is_file():
        raise ConfigError(f"--resume {run_dir}: no config.yaml there; is it a cdscale run directory?")
    if not config_file.read_bytes().strip():
        # Defaults in its place would mix two configs in one run.
        raise ConfigError(f"{config_file} is empty: the run's own config is lost; restore the file or start a new run")
    try:
        # The run directory is where it is now, whatever the working directory was at the start.
        return load_config(
            str(config_file), [*overrides, f"run.output_root={folder.parent}", f"run.name={folder.name}"]
        )
    except ConfigError as err:
        if str(config_file) in str(err):
            raise
        raise ConfigError(f"{config_file}: {err}") from None  # a field's error, which names no file


def _run(args: argparse.Namespace) -> int:
    from cdscale.distillation import run
    from cdscale.preemption import Preempted

    if args.resume is not None:
        if args.config:
            raise ConfigError("--resume continues a run with the config saved in its directory; drop --config")
        cfg = resume_config(args.resume, args.overrides)
    else:
        cfg = load_config(args.config, args.overrides)
    args.run_dir = cfg.run_dir  # where an unexpected failure's traceback goes
    try:
        run(cfg, resume=args.resume is not None)
    except Preempted as stopped:
        log.info("stopped at a safe point: %s. Continue with: cdscale run --resume %s", stopped, cfg.run_dir)
        return stopped.exit_code
    return 0


# The digit range of the default tiny-addition teacher; other ranges are saved under their own name.
BOOTSTRAP_DIGITS = (1, 3)


def _bootstrap_folder(args: argparse.Namespace) -> str:
    """Checks `cdscale bootstrap`'s arguments (a ConfigError naming the option; the default
    criterion and depth filled in) and returns the model's name in the cache."""
    from cdscale.bootstrap import BootstrapSettings

    # The demo's teacher alone has the library's 2 layers; every other keeps the 4 of its documented results.
    demo = args.task == "addition" and (args.min_digits, args.max_digits) == BOOTSTRAP_DIGITS and not args.learn_inputs
    default_layers = BootstrapSettings.num_layers if demo else 4
    if args.layers is None:
        args.layers = default_layers
    for name, value, least in (
        ("--steps", args.steps, 1),
        ("--layers", args.layers, 1),
        ("--batch-size", args.batch_size, 1),
        ("--min-digits", args.min_digits, 1),
        ("--eval-every", args.eval_every, 1),
        ("--max-restarts", args.max_restarts, 0),
    ):
        if value < least:
            raise ConfigError(f"bootstrap {name}: must be at least {least}, got {value}")
    if args.problems is not None and args.problems < args.batch_size:
        raise ConfigError(
            f"bootstrap --problems: must be at least --batch-size ({args.batch_size}), got {args.problems}"
        )
    if not args.lr > 0 or args.max_digits < args.min_digits:
        raise ConfigError(
            f"bootstrap: --lr must be positive and --max-digits at least --min-digits, "
            f"got {args.lr}, {args.min_digits}..{args.max_digits}"
        )
    if args.until_sampled_accuracy is None:  # an addition teacher: the library's criterion
        args.until_sampled_accuracy = BootstrapSettings.until_sampled_accuracy if args.task == "addition" else 0.0
    if not 0 <= args.until_sampled_accuracy <= 1:
        raise ConfigError(f"bootstrap --until-sampled-accuracy: must be in [0, 1], got {args.until_sampled_accuracy}")
    # The default digit range keeps the plain name; another range, equal-length operands or a
    # fixed problem set get their own folder, so an 8-digit teacher never overwrites the 1-3 digit one.
    suffix = (
        ""
        if args.task != "addition" or (args.min_digits, args.max_digits) == BOOTSTRAP_DIGITS
        else f"-{args.min_digits}to{args.max_digits}"
    ) + ("-same" if args.task == "addition" and args.same_length else "")
    suffix += f"-p{args.problems}" if args.problems is not None else ""
    suffix += f"-{args.layers}layers" if args.layers != default_layers else ""
    return f"tiny-{args.task}{suffix}" + ("-inputs" if args.learn_inputs else "")


def _bootstrap(args: argparse.Namespace) -> int:
    from cdscale.bootstrap import BootstrapSettings, bootstrap
    from cdscale.models import prepared_path
    from cdscale.tasks import build_task

    out = prepared_path(_bootstrap_folder(args))
    if (out / "config.json").is_file() and not args.force:
        # A cache from before 2026-12-07 holds a four-layer demo teacher under the same name.
        layers = json.loads((out / "config.json").read_text()).get("num_hidden_layers", args.layers)
        if layers != args.layers:
            raise ConfigError(
                f"bootstrap: {out} has {layers} layers, not the {args.layers} this command makes (bootstrapped "
                f"before 2026-12-07?); --force makes it anew, `cdscale bootstrap --layers {layers}` the old one "
                "in a folder of its own"
            )
        log.info("%s already bootstrapped (use --force to redo)", out)
        return 0
    if args.task == "addition":
        options = {"min_digits": args.min_digits, "max_digits": args.max_digits, "same_length": args.same_length}
        tasks = build_task("addition", options)
    else:  # the four tasks of the task-id experiment, each on 2- to 5-digit pairs
        from cdscale.tasks.arithmetic import OPERATIONS

        tasks = [build_task("arithmetic", {"operation": op, "min_digits": 2, "max_digits": 5}) for op in OPERATIONS]
    settings = BootstrapSettings(
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        eval_every=args.eval_every,
        learn_inputs=args.learn_inputs,
        until_sampled_accuracy=args.until_sampled_accuracy or None,  # 0: exactly --steps
        max_restarts=args.max_restarts,
        stop_at_criterion=args.stop_at_criterion,
        spaced_pieces=not args.character_tokenizer,
        problems=args.problems,
        num_layers=args.layers,
    )
    info = bootstrap(tasks, out, settings)
    log.info("bootstrapped tiny model in %s: %s", out, info["history"][-1])
    return 0


def _prepare_model(args: argparse.Namespace) -> int:
    from cdscale.models.smollm2 import prepare_smollm2

    print(prepare_smollm2(force=args.force))
    return 0


def _report(args: argparse.Namespace) -> int:
    from cdscale.report import write_report

    run_dirs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else run_dirs[0] / "report"
    path = write_report(run_dirs, out)
    print(path.read_text())
    log.info("wrote %s and its figures (*.png) in %s", path.name, out)
    return 0


def _config(args: argparse.Namespace) -> int:
    print(describe(load_config(args.config, args.overrides)))
    return 0


def _add_bootstrap_command(sub: argparse._SubParsersAction) -> None:
    """Adds `cdscale bootstrap`, whose options set how the tiny teacher is trained."""
    p = sub.add_parser("bootstrap", help="teach the tiny model scratchpad addition (the paper's starting teacher)")
    p.add_argument(
        "--task",
        choices=["addition", "arithmetic"],
        default="addition",
        help="addition: tiny-addition; "
        "arithmetic: tiny-arithmetic, the four instructed tasks of the task-id experiment",
    )
    p.add_argument("--steps", type=int, default=2000, help="one warm-up + cosine schedule of this many steps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--min-digits", type=int, default=BOOTSTRAP_DIGITS[0])
    p.add_argument("--max-digits", type=int, default=BOOTSTRAP_DIGITS[1])
    p.add_argument(
        "--same-length",
        action="store_true",
        help="addition: both operands of one digit count (task.options.same_length; saved as tiny-addition-...-same)",
    )
    p.add_argument("--seed", type=int, default=0)
    checks = "measure the teacher's greedy and sampled accuracy every STEPS steps (and at each schedule's end)"
    p.add_argument("--eval-every", type=int, default=500, metavar="STEPS", help=checks)
    p.add_argument(
        "--until-sampled-accuracy",
        type=float,
        default=None,
        metavar="FRACTION",
        help="train until the teacher's temperature-1 samples are right on this fraction of 200 held-out "
        "problems (checked at each schedule's end; --steps is one schedule, restarted at half "
        "length up to --max-restarts times while below it; 0: exactly --steps). Default: 0.95 for "
        "addition, 0 for arithmetic (its tiny teacher stays near 42%%: docs/results.md)",
    )
    p.add_argument("--max-restarts", type=int, default=2)
    # Off by default: the demo's teacher so stopped made a far worse student (docs/results.md).
    p.add_argument("--stop-at-criterion", action="store_true", help="also stop mid-schedule at the first passing check")
    p.add_argument(
        "--problems",
        type=int,
        default=None,
        metavar="N",
        help="learn N fixed problems (the paper's teacher had 499), not fresh ones every step; saved with "
        "the model as train_problems.jsonl, records for a baseline (folder tiny-addition-...-pN)",
    )
    _add_bootstrap_model_options(p)
    p.add_argument(
        "--learn-inputs",
        action="store_true",
        help="also learn to continue a list of the task's inputs, "
        "so few-shot prompting samples synthetic D (saved as tiny-<task>-inputs)",
    )
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=_bootstrap)


def _add_bootstrap_model_options(p: argparse.ArgumentParser) -> None:
    """`cdscale bootstrap`'s options for the tiny model itself: its depth and its tokenizer."""
    p.add_argument(
        "--layers",
        type=int,
        default=None,
        help="the tiny Llama's depth. Default: 2 for addition at the default digit range (the demo's teacher "
        "since 2026-12-07: as quick to learn, at about half the time a step, its students ahead; "
        "docs/results.md), 4 otherwise (every other teacher's documented results). Another depth is saved "
        "as ...-<N>layers",
    )
    p.add_argument(
        "--character-tokenizer",
        action="store_true",
        help="one token per character, as models bootstrapped before 2026-12-05 (to reproduce their results)",
    )


def _parser() -> argparse.ArgumentParser:
    """The command line; each subcommand sets `fn`, the function that carries it out."""
    parser = argparse.ArgumentParser(prog="cdscale", description="Distributed context distillation")
    sub = parser.add_subparsers(dest="command", required=True)

    for name, fn, help in (("run", _run, "run context distillation"), ("config", _config, "print the resolved config")):
        p = sub.add_parser(name, help=help)
        p.add_argument("--config", help="YAML config file (default: the embedded default)")
        p.add_argument("overrides", nargs="*", help="section.field=value")
        p.set_defaults(fn=fn)
        if name == "run":
            p.add_argument(
                "--resume", metavar="RUN_DIR", help="continue this run directory from its last committed state"
            )

    _add_bootstrap_command(sub)

    p = sub.add_parser("report", help="results table and plots of runs (an unfinished one as of its last commit)")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report of the first run)")
    p.set_defaults(fn=_report)

    p = sub.add_parser("prepare-model", help="convert packaged real weights into a cached safetensors folder")
    p.add_argument("name", choices=["smollm2-135m"])
    p.add_argument("--force", action="store_true")
    p.set_defaults(fn=_prepare_model)

    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    _log_to_console()
    try:
        return args.fn(args)
    except (ConfigError, FileNotFoundError, FileExistsError, RunDirDamaged) as err:
        print(f"cdscale: error: {err}", file=sys.stderr)
        return 2
    except (FloatingPointError, RunFailed) as err:  # a diverged loss, too little usable data: the last commit stays
        print(f"cdscale: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a second Ctrl-C (the first asks for a stop at a safe point)
        print("cdscale: stopped at once by a second Ctrl-C; the last commit is as it was", file=sys.stderr)
        return 130
    except Exception as err:  # anything else: one line here, the whole traceback in a file
        where = _save_traceback(getattr(args, "run_dir", None))
        print(f"cdscale: error: {_own_message(err)}\n  the full traceback is in {where}", file=sys.stderr)
        return 1


def _own_message(err: BaseException) -> str:
    """The failure in one line; a Ray task's error as its actor raised it, without Ray's wrapping."""
    cause = getattr(err, "cause", None)  # ray.exceptions.RayTaskError: the actor's own exception
    if isinstance(cause, BaseException):
        err = cause
    lines = [line for line in str(err).splitlines() if line.strip()]
    message = f"{type(err).__name__}: {lines[0].strip() if lines else '(no message)'}"
    if type(err).__name__ == "GetTimeoutError":  # a ray.get or ray.wait past run.timeout_s
        message += " (an actor did not answer within run.timeout_s: raise it for slow work, else see the actors' logs)"
    return message


def _save_traceback(run_dir: Path | None) -> Path:
    """The current exception's traceback in `run_dir/error.log`, or in a temporary file when
    there is no run directory or it cannot be written."""
    import tempfile
    import traceback

    text = traceback.format_exc()
    if run_dir is not None:
        try:
            (run_dir / "error.log").write_text(text)
            return run_dir / "error.log"
        except OSError:
            pass
    fd, path = tempfile.mkstemp(prefix="cdscale-error-", suffix=".log")
    with open(fd, "w") as f:
        f.write(text)
    return Path(path)


if __name__ == "__main__":
    sys.exit(main())
