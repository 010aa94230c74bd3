"""The ``funcbp`` command: ``funcbp train``, ``funcbp check``, ``funcbp bench``.

``funcbp train`` with no arguments trains the default CNN on the embedded digits and prints
the test accuracy as its last line; ``funcbp train --model pkg.module:factory --data data.npz
--config run.toml key=value ...`` trains yours. A new subcommand adds one entry to :data:`COMMANDS`:
``name -> (add_arguments(parser), run(args) -> exit code, one-line help)``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["COMMANDS", "build_parser", "main"]


def _model_arg(text: str) -> str:
    from funcbp.train import model_names

    if text in model_names() or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"unknown model {text!r}: choose one of "
                                     f"{', '.join(model_names())}, or a factory "
                                     "pkg.module:function")


def _data_arg(text: str) -> str:
    from funcbp.train import DATASETS

    if text in DATASETS or text.endswith(".npz") or ":" in text:
        return text
    raise argparse.ArgumentTypeError(f"unknown data {text!r}: choose one of "
                                     f"{', '.join(DATASETS)}, a file ending in .npz, or a "
                                     "loader pkg.module:function")


_TRAIN_EPILOG = """
KEY=VALUE arguments set any TrainConfig field after --config and the options, dotted for
the optimiser's options: epochs=5 lr=1e-3 optimizer=adamw optimizer.weight_decay=0.05
precision=bf16 log_every=10 writers=jsonl,csv,tensorboard save_every_steps=100 keep_last=3.
--data FILE.npz reads x_train, y_train, x_test, y_test (x_val, y_val when present);
--model pkg.module:factory imports the module (the working directory is searched) and calls
factory(), which returns a funcbp.nn Layer or an (init, apply) pair. See docs/training.md.
"""


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    from funcbp.optim import OPTIMIZERS
    from funcbp.train import PRECISIONS, RESUME_SAFE_FIELDS, SCHEDULES, TrainConfig

    d = TrainConfig()
    p.epilog = _TRAIN_EPILOG
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.usage = "funcbp train [options] [KEY=VALUE ...]"
    p.add_argument("--config", metavar="FILE",
                   help="a TOML (or JSON) config file of TrainConfig fields, [optimizer] table "
                        "for the optimiser's name and options; options and KEY=VALUE win")
    g = p.add_argument_group("data")
    g.add_argument("--data", type=_data_arg, metavar="DATA",
                   help=f"digits, mnist, fashion_mnist, FILE.npz or pkg.module:loader "
                        f"(default {d.data})")
    g.add_argument("--data-dir", help="directory with the MNIST/Fashion-MNIST IDX files "
                   "(default: search $FUNCBP_DATA, ~/.cache/funcbp, ./data, /usr/share/datasets)")
    g.add_argument("--val-fraction", type=float,
                   help=f"validation fraction (default {d.val_fraction}; 0 for none)")
    g.add_argument("--test-fraction", type=float,
                   help=f"test fraction of the digits (default {d.test_fraction})")
    g.add_argument("--split-seed", type=int, help=f"seed of the split (default {d.split_seed})")
    g.add_argument("--augment", action=argparse.BooleanOptionalAction,
                   help=f"random shifts of training images (default {d.augment})")
    g.add_argument("--max-shift", type=int, help=f"largest shift in pixels (default {d.max_shift})")
    g = p.add_argument_group("model and optimisation")
    g.add_argument("--model", type=_model_arg, metavar="MODEL",
                   help="a built-in model (digits_cnn, cnn, mlp, wide_mlp) or a factory "
                        "pkg.module:function (default digits_cnn for digits, cnn for the 28x28 "
                        "sets, mlp otherwise)")
    g.add_argument("--epochs", type=int, help=f"epochs (default {d.epochs})")
    g.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    g.add_argument("--optimizer", choices=tuple(OPTIMIZERS),
                   help=f"(default {d.optimizer}); its options as optimizer.NAME=VALUE")
    g.add_argument("--precision", choices=tuple(PRECISIONS),
                   help="compute dtype on float32 master weights (default f32; f16 with "
                        "dynamic loss scaling)")
    g.add_argument("--lr", type=float, help=f"peak learning rate (default {d.lr})")
    g.add_argument("--momentum", type=float, help=f"SGD momentum (default {d.momentum})")
    g.add_argument("--nesterov", action=argparse.BooleanOptionalAction,
                   help=f"Nesterov momentum (default {d.nesterov})")
    g.add_argument("--schedule", choices=SCHEDULES, help=f"(default {d.schedule})")
    g.add_argument("--l1", type=float, help=f"L1 penalty on weights (default {d.l1})")
    g.add_argument("--l2", type=float, help=f"L2 penalty on weights (default {d.l2})")
    g.add_argument("--clip-norm", type=float, help="clip gradients to this global norm")
    g.add_argument("--clip-value", type=float, help="clip gradient entries to [-v, v]")
    g.add_argument("--patience", type=int,
                   help=f"early stopping patience in epochs (default {d.patience}; 0: off)")
    g.add_argument("--seed", type=int, help=f"seed of init, order, dropout (default {d.seed})")
    g.add_argument("--grad", choices=("funcbp", "jax"),
                   help="gradient implementation: funcbp's own (default) or jax's (reference)")
    g.add_argument("--eval-batch-size", type=int, help=f"(default {d.eval_batch_size})")
    g = p.add_argument_group("run")
    g.add_argument("--run-dir", help="run directory (default runs/<time>-<data>-<model>)")
    g.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint, with the config "
                        "saved in it")
    g.add_argument("--allow-config-change", metavar="FIELD", action="append", default=[],
                   help="with --resume: let FIELD differ from the checkpoint's config (given as "
                        "an option or edited in config.json); repeatable; only fields that "
                        "change neither data, model nor optimisation: "
                        + ", ".join(RESUME_SAFE_FIELDS))
    g.add_argument("--quiet", action="store_true", help="no progress bar or epoch lines")
    g.add_argument("--log-every", type=int, metavar="STEPS",
                   help="write step scalars (loss, lr, grad norms) every STEPS steps")
    g.add_argument("--writers", help=f"metric writers besides metrics.jsonl (default "
                                     f"{d.writers}; also tensorboard)")
    g.add_argument("--save-every-steps", type=int, metavar="STEPS",
                   help="also checkpoint every STEPS steps (resume continues mid-epoch)")
    g.add_argument("--keep-last", type=int, metavar="K",
                   help="keep the last K checkpoints as checkpoints/step_<step>.ckpt")
    g.add_argument("--async-save", action=argparse.BooleanOptionalAction,
                   help="write checkpoints on a background thread")
    g.add_argument("--export-safetensors", action=argparse.BooleanOptionalAction,
                   help="write the final parameters as params.safetensors")
    g.add_argument("--grad-flow", action=argparse.BooleanOptionalAction,
                   help="log per-layer gradient norms each epoch and plot them")
    g.add_argument("--activation-stats", action=argparse.BooleanOptionalAction,
                   help="log each activation's mean, std, zero and saturated fractions each "
                        "epoch and plot them (dead ReLUs, saturated sigmoids)")
    g.add_argument("--log-quantities", metavar="NAMES",
                   help="log funcbp.quantities each epoch, e.g. batch_l2,variance: per-layer "
                        "gradient SNR and per-example norm percentiles (metrics and plot)")
    g = p.add_argument_group("devices and hosts (see docs/distributed.md)")
    g.add_argument("--devices", type=int,
                   help="train data-parallel on this many devices (the batch size is global)")
    g.add_argument("--shard-params", action=argparse.BooleanOptionalAction,
                   help="split parameters and optimiser state across the devices")
    g.add_argument("--coordinator", metavar="HOST:PORT",
                   help="join a multi-process run through jax.distributed (process 0's address;"
                        " or set FUNCBP_COORDINATOR)")
    g.add_argument("--num-processes", type=int, help="processes in the run (FUNCBP_NUM_PROCESSES)")
    g.add_argument("--process-id", type=int, help="this process's id (FUNCBP_PROCESS_ID)")
    g.add_argument("--distributed", action="store_true",
                   help="call jax.distributed.initialize() with cluster auto-detection "
                        "(TPU slices, Slurm)")



def _run_train(args: argparse.Namespace) -> int:
    from funcbp.train import TrainConfig, fit, parallel, resume
    from funcbp.train.configfile import config_values

    try:
        if args.distributed and not args.coordinator:
            import jax

            jax.distributed.initialize()
        else:
            parallel.initialize_distributed(args.coordinator, args.num_processes,
                                            args.process_id)
    except (ValueError, RuntimeError) as err:
        print(f"funcbp train: could not join the distributed run: {err}", file=sys.stderr)
        return 2
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    if args.allow_config_change and not args.resume:
        print("funcbp train: --allow-config-change only applies with --resume RUN_DIR",
              file=sys.stderr)
        return 2
    if args.resume and args.run_dir:
        print("funcbp train: --resume RUN_DIR continues that directory; drop --run-dir",
              file=sys.stderr)
        return 2
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            values = config_values(args.config, given, getattr(args, "overrides", ()))
            if args.resume:
                resume(args.resume, quiet=args.quiet,
                       allow_config_change=args.allow_config_change, **values)
            else:
                fit(TrainConfig(**values), run_dir=args.run_dir, quiet=args.quiet)
        except (ValueError, OSError, FloatingPointError, TypeError, ImportError) as err:
            # Every expected failure (bad option, bad or damaged run directory, a run already
            # there, NaN, bad labels) names the file or field and what to do: no traceback.
            print(f"funcbp train: {type(err).__name__}: {err}", file=sys.stderr)
            return 1
    return 0


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"funcbp train: warning: {message}", file=sys.stderr)


def _add_check_arguments(p: argparse.ArgumentParser) -> None:
    from funcbp.check.cli import add_arguments

    add_arguments(p)


def _run_check(args: argparse.Namespace) -> int:
    from funcbp.check.cli import run

    return run(args)


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bench_args", nargs=argparse.REMAINDER, metavar="...",
                   help="options of the benchmark suite, e.g. --quick, --case NAME, --no-torch "
                        "(funcbp bench --help lists them)")


def _benchmarks_main() -> Callable | None:
    """``benchmarks.__main__.main`` of a source checkout, or None when there is none."""
    candidates = [Path.cwd(), Path(__file__).resolve().parents[1]]
    for root in candidates:
        if (root / "benchmarks" / "__main__.py").is_file():
            if str(root) not in sys.path:
                sys.path.insert(0, str(root))
            break
    try:
        return importlib.import_module("benchmarks.__main__").main
    except ImportError:
        return None


def _run_bench(args: argparse.Namespace) -> int:
    main = _benchmarks_main()
    if main is None:
        print("funcbp bench: the benchmark suite is not installed with the package; it runs "
              "from a source checkout: git clone the funcbp repository, then `make bench` "
              "(or `funcbp bench` inside the checkout)", file=sys.stderr)
        return 2
    argv = list(args.bench_args)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    try:
        main(argv)
    except SystemExit as exit_:  # argparse's --help and usage errors
        return exit_.code if isinstance(exit_.code, int) else 1
    return 0


COMMANDS: dict[str, tuple[Callable, Callable[[argparse.Namespace], int], str]] = {
    "train": (_add_train_arguments, _run_train,
              "train a model (default: a CNN on the embedded digits)"),
    "check": (_add_check_arguments, _run_check,
              "verify every VJP rule, or a function of yours (MODULE:FUNCTION), against jax "
              "and finite differences"),
    "bench": (_add_bench_arguments, _run_bench,
              "run the benchmark suite against jax.grad and PyTorch (python -m benchmarks; "
              "from a source checkout)"),
}


def build_parser() -> argparse.ArgumentParser:
    """The ``funcbp`` argument parser, one subparser per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="funcbp", description="funcbp: JAX training with its own reverse-mode autodiff")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(sub.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``funcbp COMMAND ...``; returns the exit code (0 on success).

    Examples:
      >>> from funcbp.cli import main
      >>> main(["train", "--epochs", "1", "--model", "mlp", "--quiet"])  # doctest: +SKIP
      test accuracy: 0.8106
      0
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # everything after "bench" is for the suite's own parser
        return _run_bench(argparse.Namespace(bench_args=argv[1:]))
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # funcbp train's KEY=VALUE overrides may stand anywhere among its options.
    overrides = [a for a in extra if args.command == "train" and _is_override(a)]
    unknown = [a for a in extra if a not in overrides]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    args.overrides = overrides
    _, run, _ = COMMANDS[args.command]
    return run(args)


def _is_override(text: str) -> bool:
    key, sep, _ = text.partition("=")
    return (bool(sep) and not text.startswith("-")
            and key.replace(".", "_").replace("-", "_").isidentifier())


if __name__ == "__main__":
    sys.exit(main())
