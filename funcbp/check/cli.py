"""``funcbp check``: verify every registered rule, or a user's function, from the command line.

- ``funcbp check``: runs :func:`funcbp.check.rules.verify_rules` and prints one row per
  registered primitive (status, worst absolute and relative error, dtypes, cases).
- ``funcbp check MODULE:FUNCTION --args SPEC``: runs :func:`funcbp.check.check_grads` on the
  user's function with random inputs built from ``SPEC`` (``--grad-fn jax`` checks jax's
  gradient instead of funcbp's; ``--order 2``, ``--modes rev,fwd``, ``--batched``,
  ``--deterministic`` add checks; ``--devices N`` runs
  :func:`funcbp.check.distributed_grad_check` instead).

Both print JSON instead with ``--json`` and exit with status 1 when a gradient is wrong, 2 when
nothing could be checked (a usage error, or the user's function, sample or import raised: the
error's first line and the argument shapes are printed), so CI can tell them apart.

Input specs: ``--args`` is a JSON list with one entry per positional argument. A string
``"f32[3,4]"`` becomes a standard normal array of that dtype and shape (``f16``, ``bf16``,
``f32``, ``f64``; ``i32[5]:0:10`` draws integers in ``[0, 10)``); a suffix ``:pos`` draws
positive values in ``[0.5, 2)``; numbers stay numbers; lists and objects become pytrees. The
shorthand ``--args "f32[3,4] f32[4]"`` (space-separated arrays) also works.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["HELP", "add_arguments", "main_check", "parse_args_spec", "run"]

HELP = "verify funcbp's VJP rules, or the gradients of your own function"

_DTYPES = {"f16": "float16", "bf16": "bfloat16", "f32": "float32", "f64": "float64",
           "i8": "int8", "i32": "int32", "i64": "int64", "bool": "bool"}
_SPEC = re.compile(r"^(?P<dtype>[a-z0-9]+)\[(?P<shape>[\d,\s]*)\](?::(?P<dist>.*))?$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Adds ``funcbp check``'s arguments to ``p`` (a subparser of ``funcbp``)."""
    p.add_argument("target", nargs="?", metavar="MODULE:FUNCTION",
                   help="check this function's gradients instead of the registered rules "
                        "(MODULE may be a dotted module name or a path to a .py file)")
    p.add_argument("--json", action="store_true", help="print the report as JSON (for CI)")
    g = p.add_argument_group("registered rules (no MODULE:FUNCTION)")
    g.add_argument("--only", metavar="PRIMS",
                   help="comma-separated primitive names to verify (default: all registered)")
    g.add_argument("--seeds", type=int, default=2, help="random draws per case (default 2)")
    g.add_argument("--quick", action="store_true",
                   help="one draw per case, float32 and float64 only")
    g.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    g.add_argument("--harnesses", action="store_true",
                   help="run jax's own primitive test harnesses through funcbp.vjp against "
                        "jax.vjp instead (--quick: one per primitive; --only: these primitives)")
    g.add_argument("--coverage", action="store_true",
                   help="list the primitives jax can differentiate that have no funcbp rule")
    g = p.add_argument_group("your function (MODULE:FUNCTION)")
    g.add_argument("--args", dest="args_spec", metavar="SPEC",
                   help='input spec, e.g. \'[{"w": "f32[3,4]", "b": "f32[4]"}, "f32[2,3]"]\'')
    g.add_argument("--sample", metavar="MODULE:FUNCTION",
                   help="a function key -> tuple of arguments, instead of --args")
    g.add_argument("--argnums", metavar="N,M", help="arguments to differentiate (default: all)")
    g.add_argument("--seed", type=int, default=0, help="seed of the inputs (default 0)")
    g.add_argument("--rtol", type=float, help="tolerance against jax (default: by dtype)")
    g.add_argument("--atol", type=float)
    g.add_argument("--fd-rtol", type=float, help="tolerance against finite differences")
    g.add_argument("--fd-atol", type=float)
    g.add_argument("--grad-fn", default="funcbp", metavar="NAME",
                   help="the gradient to check: funcbp (default), jax (jax.grad), or "
                        "MODULE:FUNCTION, a transformation like jax.grad")
    g.add_argument("--against", metavar="REFS",
                   help="comma-separated references: fd, jax, MODULE:FUNCTION (default: jax,fd;"
                        " fd alone for --grad-fn jax)")
    g.add_argument("--order", type=int, choices=(1, 2), default=1,
                   help="2: also check the gradient of the gradient (Hessian-vector products)")
    g.add_argument("--modes", default="rev", metavar="rev,fwd",
                   help="rev (the gradient, leaf by leaf) and/or fwd (jax.jvp against finite "
                        "differences)")
    g.add_argument("--batched", action="store_true",
                   help="also check jax.vmap of the gradient against a loop")
    g.add_argument("--deterministic", action="store_true",
                   help="also check that two runs agree bit for bit")
    g.add_argument("--devices", type=int, metavar="N",
                   help="instead: compare the data-parallel gradient on N devices with the "
                        "one-device gradient (argument 0, or --argnums, is the parameters; the "
                        "others are the batch, split along their first axis); on a CPU, N "
                        "devices are made for it")
    g.add_argument("--parallel-grad", metavar="MODULE:FUNCTION",
                   help="with --devices: your data-parallel gradient (params, batch) -> grads "
                        "(default: the trainer's sharded jit)")


def run(args: argparse.Namespace) -> int:
    """Runs ``funcbp check`` for parsed arguments; returns the exit status."""
    try:
        if args.target:
            return _run_function(args)
        if args.harnesses:
            return _run_harnesses(args)
        if args.coverage:
            return _run_coverage(args)
        return _run_rules(args)
    except _UsageError as err:
        print(f"funcbp check: {err}", file=sys.stderr)
        return 2


def main_check(argv: Sequence[str] | None = None) -> int:
    """``funcbp check`` as a function: parses ``argv`` and returns the exit status.

    Examples:
      >>> from funcbp.check.cli import main_check
      >>> main_check(["--only", "tanh,mul", "--quick"])  # doctest: +SKIP
      0
    """
    parser = argparse.ArgumentParser(prog="funcbp check", description=HELP)
    add_arguments(parser)
    return run(parser.parse_args(argv))


class _UsageError(ValueError):
    pass


def _run_rules(args: argparse.Namespace) -> int:
    from funcbp.check.rules import verify_rules

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    seeds = 1 if args.quick else args.seeds
    dtypes = ("float32", "float64") if args.quick else None
    try:
        report = _by_family(verify_rules, only, seeds=seeds, dtypes=dtypes)
    except ValueError as err:
        raise _UsageError(str(err)) from None
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=_json_default))
    elif args.markdown:
        print(report.table(markdown=True))
        print()
        print(report.summary())
    else:
        print(report)
    return 0 if report.passed else 1


def _progress(line: str) -> None:
    """A progress line on stderr, so that --json output on stdout stays parseable."""
    print(line, file=sys.stderr, flush=True)


def _by_family(verify_rules: Callable, only: list[str] | None, **kw: Any) -> Any:
    """``verify_rules`` one rule family at a time, printing a line per family as it finishes
    (a full run takes minutes; on a loaded machine, many)."""
    import time

    from funcbp.autodiff.rules import RULE_MODULES, VJP_RULES
    from funcbp.check.rules import RulesReport

    registered = {p.name: RULE_MODULES.get(p, "?").rsplit(".", 1)[-1] for p in VJP_RULES}
    names = sorted(registered) if only is None else only
    if any(n not in registered for n in names):
        return verify_rules(names, **kw)  # raises the ValueError that names the unknown ones
    families: dict[str, list[str]] = {}
    for n in names:
        families.setdefault(registered[n], []).append(n)
    _progress(f"funcbp check: {len(names)} rules in {len(families)} families")
    rules, start = [], time.perf_counter()
    for i, (family, members) in enumerate(sorted(families.items()), 1):
        part = verify_rules(members, **kw)
        rules += part.rules
        c = part.counts()
        _progress(f"[{i}/{len(families)}] {family}: {len(members)} rules, {c['ok']} ok, "
                  f"{c['FAIL']} failed, {c['not exercised']} not exercised "
                  f"({part.seconds:.1f} s)")
    return RulesReport(rules, time.perf_counter() - start)


def _run_harnesses(args: argparse.Namespace) -> int:
    from funcbp.check.harnesses import run_harnesses, select_harnesses

    only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
    subset = "fast" if args.quick else "all"
    total = len({h.group_name for h, _ in select_harnesses(subset, only)})
    if not total:
        raise _UsageError(f"--only {args.only}: no harness of jax exercises these primitives")
    done = []

    def progress(group: str, results: list) -> None:
        done.append(group)
        n_pass = sum(r.status == "pass" for r in results)
        n_fail = sum(r.status == "FAIL" for r in results)
        _progress(f"[{len(done)}/{total}] {group}: {len(results)} runs, {n_pass} pass, "
                  f"{n_fail} FAIL, {len(results) - n_pass - n_fail} other "
                  f"({sum(r.seconds for r in results):.1f} s)")

    report = run_harnesses(subset, only, seed=args.seed, progress=progress)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=_json_default))
    elif args.markdown:
        print(report.table(markdown=True))
        print()
        print(report.summary())
    else:
        print(report)
    return 0 if report.passed else 1


def _run_coverage(args: argparse.Namespace) -> int:
    from funcbp.autodiff.coverage import coverage_report

    report = coverage_report()
    if args.json:
        print(json.dumps(report._asdict() | {"stale": report.stale()}, indent=1))
    else:
        print(report)
    return 0 if not report.missing and not report.stale() else 1


def _run_function(args: argparse.Namespace) -> int:
    import jax

    from funcbp.check.grads import check_grads

    if args.devices:
        try:  # CPU devices for the mesh; only possible before jax starts its backend
            jax.config.update("jax_num_cpu_devices", max(args.devices, 1))
        except Exception:  # pragma: no cover - the backend already started
            pass
    fn = load_callable(args.target)
    if re.search(r"\bf64\[", args.args_spec or ""):
        jax.config.update("jax_enable_x64", True)  # float64 inputs were asked for
    key = jax.random.key(args.seed)
    if args.sample:
        sample = load_callable(args.sample)
        try:
            values = sample(key)
        except Exception as err:
            return _raised(f"your --sample function {args.sample} raised", err, None)
        if not isinstance(values, (tuple, list)):
            values = (values,)
    elif args.args_spec:
        values = parse_args_spec(args.args_spec, key)
    else:
        raise _UsageError(f"{args.target}: say what to call it with: --args SPEC (e.g. "
                          "--args 'f32[3,4] f32[4]') or --sample MODULE:FUNCTION")
    argnums = None
    if args.argnums:
        try:
            argnums = tuple(int(n) for n in args.argnums.split(","))
        except ValueError:
            raise _UsageError(
                f"--argnums {args.argnums!r}: expected integers such as 0,2") from None
    # Exit 2, not 1, when nothing could be compared: 1 means "a gradient is wrong".
    try:
        jax.block_until_ready(fn(*values))
    except Exception as err:
        return _raised(f"your function {args.target} raised", err, values)
    grad_fn = _transform(args.grad_fn, "--grad-fn")
    against = None if not args.against else tuple(
        r if r in ("fd", "jax") else _transform(r, "--against")
        for r in (t.strip() for t in args.against.split(",")) if r)
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    if any(m not in ("rev", "fwd") for m in modes) or not modes:
        raise _UsageError(f"--modes {args.modes!r}: write rev, fwd or rev,fwd")
    if args.devices:
        return _run_distributed(args, fn, values, argnums, grad_fn)
    try:
        report = check_grads(fn, tuple(values), argnums, rtol=args.rtol, atol=args.atol,
                             fd_rtol=args.fd_rtol, fd_atol=args.fd_atol, seed=args.seed,
                             grad_fn=grad_fn, against=against, order=args.order, modes=modes,
                             batched=args.batched, deterministic=args.deterministic)
    except Exception as err:
        return _raised(f"differentiating {args.target} raised", err, values)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=_json_default))
    else:
        print(report)
        if not report.passed:
            print()
            print(report.failure_message())
    return 0 if report.passed else 1


def _transform(name: str, option: str) -> Callable | None:
    """``funcbp`` -> None (check_grads's default), ``jax`` -> jax.grad, else MODULE:FUNCTION."""
    import jax

    if name == "funcbp":
        return None
    if name == "jax":
        return jax.grad
    if ":" not in name:
        raise _UsageError(f"{option} {name!r}: write funcbp, jax or MODULE:FUNCTION")
    return load_callable(name)


def _run_distributed(args: argparse.Namespace, fn: Callable, values: Any, argnums: Any,
                     grad_fn: Callable | None) -> int:
    from funcbp.check.distributed import distributed_grad_check

    nums = argnums or (0,)
    if len(nums) != 1:
        raise _UsageError("--devices: give one --argnums (the parameters); the other arguments "
                          "are the batch")
    k = nums[0] % len(values)
    params, batch = values[k], tuple(v for i, v in enumerate(values) if i != k)

    def loss(p, b):
        full = list(b)
        full.insert(k, p)
        return fn(*full)

    loss.__name__ = getattr(fn, "__name__", "loss")
    dp = load_callable(args.parallel_grad) if args.parallel_grad else None
    try:
        report = distributed_grad_check(loss, params, batch, args.devices, grad_fn=grad_fn,
                                        parallel_grad_fn=dp, rtol=args.rtol, atol=args.atol)
    except ValueError as err:
        raise _UsageError(str(err)) from None
    except Exception as err:
        return _raised(f"the data-parallel gradient of {args.target} raised", err, values)
    if args.json:
        print(json.dumps(report.to_dict(), indent=1, default=_json_default))
    else:
        print(report)
    return 0 if report.passed else 1


def _describe(value: Any) -> str:
    """``f32[3,4]`` for an array, the pytree of those for a container, repr otherwise."""
    if isinstance(value, (list, tuple)):
        inner = ", ".join(_describe(v) for v in value)
        return f"[{inner}]" if isinstance(value, list) else f"({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in value.items()) + "}"
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        names = {v: k for k, v in _DTYPES.items()}
        dtype = names.get(str(value.dtype), str(value.dtype))
        return f"{dtype}[{','.join(map(str, value.shape))}]"
    return repr(value)


def _raised(what: str, err: Exception, values: Any) -> int:
    """Report an exception from the user's code (first line, argument shapes); exit 2."""
    first = (str(err).strip().splitlines() or [""])[0]
    print(f"funcbp check: {what} {type(err).__name__}: {first}", file=sys.stderr)
    if values is not None:
        print(f"  arguments: {', '.join(_describe(v) for v in values)}", file=sys.stderr)
    print("  nothing was checked (exit status 2; status 1 means a gradient is wrong). Fix the "
          "function or the inputs (--args / --sample) and run again", file=sys.stderr)
    return 2


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def load_callable(target: str) -> Callable:
    """``"pkg.module:fn"`` or ``"path/to/file.py:fn"`` -> the function (attribute path allowed)."""
    module_name, sep, attr = target.rpartition(":")
    if not sep or not module_name or not attr:
        raise _UsageError(f"{target!r}: expected MODULE:FUNCTION, e.g. mypkg.model:loss or "
                          "model.py:loss")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise _UsageError(f"{target!r}: no such file {path}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules.setdefault(path.stem, module)
        try:
            spec.loader.exec_module(module)
        except Exception as err:
            raise _UsageError(f"{target!r}: importing {path} raised {type(err).__name__}: "
                              f"{(str(err).splitlines() or [''])[0]}") from None
    else:
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))  # so that local modules import, as python -m does
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise _UsageError(f"{target!r}: cannot import {module_name!r}: {err}") from None
        except Exception as err:
            raise _UsageError(f"{target!r}: importing {module_name!r} raised "
                              f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
                              ) from None
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise _UsageError(f"{target!r}: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise _UsageError(f"{target!r}: {attr} is not callable")
    return obj


def parse_args_spec(spec: str, key: Any) -> tuple:
    """Builds random positional arguments from an input spec (see the module docstring).

    Examples:
      >>> import jax
      >>> w, x = parse_args_spec('[{"w": "f32[3,4]"}, "f32[2,3]"]', jax.random.key(0))
      >>> w["w"].shape, x.shape
      ((3, 4), (2, 3))
    """
    import jax

    text = spec.strip()
    if text.startswith(("[", "{", '"')):
        try:
            tree = json.loads(text)
        except json.JSONDecodeError as err:
            raise _UsageError(f"--args {spec!r} is not valid JSON: {err}") from None
        if not isinstance(tree, list):
            tree = [tree]
    else:
        tree = text.split()
    counter = iter(range(1 << 30))

    def build(node: Any) -> Any:
        if isinstance(node, str):
            return _array(node, jax.random.fold_in(key, next(counter)))
        if isinstance(node, list):
            return [build(n) for n in node]
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, (int, float, bool)) or node is None:
            return node
        raise _UsageError(f"--args: cannot build an argument from {node!r}")

    return tuple(build(n) for n in tree)


def _array(text: str, key: Any) -> Any:
    import jax
    import jax.numpy as jnp

    m = _SPEC.match(text.strip())
    if not m or m["dtype"] not in _DTYPES:
        raise _UsageError(f"--args: {text!r} is not an array spec; write dtype[shape] with dtype "
                          f"one of {', '.join(_DTYPES)}, e.g. f32[3,4] or i32[5]:0:10")
    dtype = jnp.dtype(_DTYPES[m["dtype"]])
    shape = tuple(int(s) for s in m["shape"].split(",") if s.strip())
    dist = m["dist"] or ""
    if dtype == jnp.bool_:
        return jax.random.bernoulli(key, 0.5, shape)
    if jnp.issubdtype(dtype, jnp.integer):
        lo, hi = 0, 10
        if dist:
            try:
                lo, hi = (int(v) for v in dist.split(":"))
            except ValueError:
                raise _UsageError(f"--args: {text!r}: integer ranges are written "
                                  "i32[shape]:low:high") from None
        return jax.random.randint(key, shape, lo, hi, dtype)
    if dist in ("", "normal"):
        return jax.random.normal(key, shape, dtype)
    if dist == "pos":
        return jax.random.uniform(key, shape, dtype, 0.5, 2.0)
    raise _UsageError(f"--args: {text!r}: unknown distribution {dist!r} (use :pos or nothing)")


if __name__ == "__main__":
    sys.exit(main_check())
