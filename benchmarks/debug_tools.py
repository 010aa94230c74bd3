"""funcbp's gradient-debugging tools against jax's and PyTorch's, on the same planted bugs.

    python -m benchmarks.debug_tools [--out FILE.json] [--no-torch]

Each bug is written once in JAX and once in PyTorch (the same computation); every tool that
addresses it runs on it once, in this process, and the table says what the tool reported
(``found``: it flagged the bug, with what it said; ``missed``; ``false failure``: it failed a
correct gradient) and the wall time of its first call (tracing and compilation included, as
when a user reaches for the tool; the tools run in the order of the table, so later ones
find some of jax's caches warm) and of a second, identical call.

Bugs: (A) ``log(0)`` in iteration 3 of a 5-step scan (forward ``-inf``); (B) the gradient of
``sqrt(sum(x^2))`` at ``x = 0`` (backward ``inf * 0 = NaN``, value finite); (C) a ``custom_vjp``
whose backward is 1.5 times too large; (D) a ``custom_jvp`` with the right slope and no
curvature (second derivative 0 instead of ``-sin``); (E) ``relu`` at exactly 0, a *correct*
gradient whose finite-difference check straddles the kink; (F) a dead ReLU layer.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import re
import time
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import funcbp
from funcbp.check import check_grads
from funcbp.diagnostics import activation_stats


def _once(fn: Callable) -> tuple[object, float, str]:
    t = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out, err = fn(), ""
    except Exception as e:  # the tools report by raising
        out, err = None, f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
    return out, time.perf_counter() - t, err


def _timed(fn: Callable) -> tuple[object, tuple[float, float], str]:
    """(result or None, (seconds of the first call, of a second call), the exception's first
    line or '')."""
    out, first, err = _once(fn)
    _, second, _ = _once(fn)
    return out, (first, second), err


# --- the bugs in JAX --------------------------------------------------------------------------

def _scan_body(h, x):
    y = jnp.log(h * x)  # bug A: log(0) where x == 0
    return h + 0.1 * y, y


def scan_loss(w, xs):
    h, ys = lax.scan(_scan_body, w, xs)
    return jnp.sum(h) + jnp.sum(ys)


def norm_loss(x):
    return jnp.sqrt(jnp.sum(x * x))  # bug B at x == 0


@jax.custom_vjp
def bad_sin(x):
    return jnp.sin(x)


bad_sin.defvjp(lambda x: (jnp.sin(x), x), lambda x, ct: (ct * jnp.cos(x) * 1.5,))  # bug C


@jax.custom_jvp
def flat_sin(x):
    return jnp.sin(x)


@flat_sin.defjvp
def _flat_sin_jvp(p, t):
    return jnp.sin(p[0]), jnp.cos(lax.stop_gradient(p[0])) * t[0]  # bug D: no curvature


A_ARGS = (jnp.ones(3), jnp.array([1.0, 2.0, 3.0, 0.0, 4.0])[:, None] * jnp.ones((5, 3)))
X = jnp.array([0.3, 0.7, 1.1])


def run_jax(results: list) -> None:
    def add(bug, tool, verdict, detail, seconds):
        results.append({"bug": bug, "tool": tool, "verdict": verdict, "detail": detail,
                        "seconds_first": round(seconds[0], 4),
                        "seconds_again": round(seconds[1], 4)})
        print(f"{bug:<2} {tool:<48} {verdict:<15} {seconds[0]:7.3f} s {seconds[1]:7.3f} s  "
              f"{detail[:80]}", flush=True)

    # A and B: where does the non-finite value start?
    for bug, f, args in (("A", scan_loss, A_ARGS), ("B", norm_loss, (jnp.zeros(3),))):
        rep, s, err = _timed(lambda f=f, args=args: funcbp.find_nonfinite(f, *args))
        site = rep.first if rep is not None else None
        add(bug, "funcbp.find_nonfinite", "found" if site else "missed",
            (f"{site.phase} {site.primitive} at line {site.where.split(':')[1]}, "
             f"{site.path_str()}") if site else err, s)
        for flags in (("jax_debug_nans",), ("jax_debug_nans", "jax_debug_infs")):
            for flag in flags:
                jax.config.update(flag, True)
            try:
                _, s, err = _timed(lambda f=f, args=args: jax.block_until_ready(
                    jax.value_and_grad(f)(*args)))
            finally:
                for flag in flags:
                    jax.config.update(flag, False)
            add(bug, " + ".join(flags), "found" if err else "missed", err or "no error", s)

    # C, D, E: is this gradient right?
    cases = [("C", lambda x: jnp.sum(bad_sin(x)), 1, "wrong"),
             ("D", lambda x: jnp.sum(flat_sin(x)), 2, "wrong"),
             ("E", lambda x: jnp.sum(jax.nn.relu(x) * jnp.arange(1.0, 4.0)), 1, "right")]
    for bug, f, order, truth in cases:
        x = jnp.array([0.0, 0.7, -1.1]) if bug == "E" else X
        rep, s, err = _timed(lambda f=f, x=x, order=order: check_grads(
            f, (x,), grad_fn=jax.grad, order=order))
        verdict = _verdict(rep is not None and rep.passed, truth, bool(rep and rep.warnings))
        detail = (rep.warnings[0] if rep.warnings else
                  (rep.failure_message().splitlines()[1].strip() if not rep.passed
                   else "passed")) if rep else err
        add(bug, f"funcbp.check.check_grads(grad_fn=jax.grad, order={order})", verdict, detail, s)
        from jax.test_util import check_grads as jax_check

        _, s, err = _timed(lambda f=f, x=x, order=order: jax_check(
            f, (x,), order=order, modes=["rev"]))
        add(bug, f"jax.test_util.check_grads(order={order})", _verdict(not err, truth, False),
            err or "passed", s)

    # F: which layer is dead?
    net = funcbp.nn.serial(funcbp.nn.Dense(16), funcbp.nn.relu, funcbp.nn.Dense(16),
                           funcbp.nn.relu, funcbp.nn.Dense(4))
    _, params = net.init(jax.random.key(0), (1, 8))
    params["dense_1"]["b"] = params["dense_1"]["b"] - 100.0
    probe = jax.random.normal(jax.random.key(1), (64, 8))
    stats, s, err = _timed(lambda: activation_stats(net.apply, params, probe))
    dead = [k for k in stats.order if float(stats.layers[k]["zero"]) == 1.0] if stats else []
    add("F", "funcbp.diagnostics.activation_stats", "found" if dead else "missed",
        f"100% zero: {', '.join(dead)}" if dead else err, s)


def _verdict(passed: bool, truth: str, warned: bool) -> str:
    if truth == "wrong":
        return "missed" if passed else "found"
    if passed:
        return "ok, kink warned" if warned else "ok"
    return "false failure"


# --- the same bugs in PyTorch -------------------------------------------------------------------

def run_torch(results: list) -> None:
    import torch

    torch.set_default_dtype(torch.float64)

    def add(bug, tool, verdict, detail, seconds):
        results.append({"bug": bug, "tool": tool, "verdict": verdict, "detail": detail,
                        "seconds_first": round(seconds[0], 4),
                        "seconds_again": round(seconds[1], 4)})
        print(f"{bug:<2} {tool:<48} {verdict:<15} {seconds[0]:7.3f} s {seconds[1]:7.3f} s  "
              f"{detail[:80]}", flush=True)

    def scan_loss_t(w, xs):
        h, ys = w, []
        for x in xs:
            y = torch.log(h * x)
            h = h + 0.1 * y
            ys.append(y)
        return h.sum() + torch.stack(ys).sum()

    def norm_loss_t(x):
        return torch.sqrt(torch.sum(x * x))

    w = torch.ones(3, requires_grad=True)
    xs = torch.tensor([1.0, 2.0, 3.0, 0.0, 4.0])[:, None] * torch.ones(5, 3)
    for bug, call in (("A", lambda: scan_loss_t(w, xs)),
                      ("B", lambda: norm_loss_t(torch.zeros(3, requires_grad=True)))):
        seen: list = []

        def run(call=call, seen=seen):
            stderr = io.StringIO()
            with contextlib.redirect_stderr(stderr), warnings.catch_warnings(record=True) as w:
                warnings.simplefilter("always")
                try:
                    with torch.autograd.detect_anomaly():
                        call().backward()
                finally:
                    seen += [str(m.message) for m in w] + [stderr.getvalue()]
        _, s, err = _timed(run)
        # anomaly mode prints the traceback of the forward call that made the failing node
        lines = re.findall(r'debug_tools\.py", line (\d+)', "\n".join(seen))
        where = f" (forward traceback: line {lines[-1]})" if lines else ""
        add(bug, "torch.autograd.detect_anomaly", "found" if err else "missed",
            (err + where) if err else "no error", s)

    class BadSin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.cos(x) * 1.5  # bug C

    class FlatSin(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sin(x)

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return g * torch.cos(x.detach())  # bug D: no curvature

    x = torch.tensor([0.3, 0.7, 1.1], requires_grad=True)
    x0 = torch.tensor([0.0, 0.7, -1.1], requires_grad=True)
    weights = torch.arange(1.0, 4.0)
    cases = [("C", lambda x: BadSin.apply(x).sum(), x, torch.autograd.gradcheck, "wrong"),
             ("D", lambda x: FlatSin.apply(x).sum(), x, torch.autograd.gradgradcheck, "wrong"),
             ("E", lambda x: (torch.relu(x) * weights).sum(), x0, torch.autograd.gradcheck,
              "right")]
    for bug, f, arg, tool, truth in cases:
        ok, s, err = _timed(lambda f=f, arg=arg, tool=tool: tool(f, (arg,)))
        add(bug, f"torch.autograd.{tool.__name__}", _verdict(bool(ok) and not err, truth, False),
            err or "passed", s)
    add("F", "torch (no built-in activation statistics)", "n/a",
        "forward hooks written by hand, or fastai ActivationStats / wandb.watch", (0.0, 0.0))


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the results as JSON")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args(argv)
    jax.config.update("jax_enable_x64", True)  # both sides in float64
    results: list = []
    run_jax(results)
    if not args.no_torch:
        run_torch(results)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"results": results, "jax": jax.__version__,
                       "backend": jax.default_backend()}, f, indent=1)
    return results


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
