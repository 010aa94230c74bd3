"""Around the steps: each epoch's diagnostics and line, and the end of a run (plots, the test
split, ``summary.json``, the exported parameters)."""

from __future__ import annotations

import time

import jax
import numpy as np

import funcbp
from funcbp.diagnostics import (
    activation_stats,
    gradient_flow,
    plot_activation_stats,
    plot_gradient_flow,
)
from funcbp.quantities import plot_summary as plot_quantities
from funcbp.quantities import quantities
from funcbp.quantities import summarize as summarize_quantities
from funcbp.train import rundir
from funcbp.train.checkpoint import key_path_str
from funcbp.train.export import save_safetensors
from funcbp.train.report import _save_whole, evaluate, evaluate_batches, plot_history
from funcbp.train.userdata import ArrayData, as_batch

__all__ = ["diagnostics", "evaluate_split", "finish", "say_epoch"]


def evaluate_split(eval_step, params, split, batch_size) -> dict:
    """Loss (and accuracy) of ``params`` on a split: arrays in batches, or an iterable."""
    if isinstance(split, ArrayData):
        return evaluate(eval_step, params, split.x, split.y, batch_size)
    return evaluate_batches(eval_step, params, (tuple(jax.numpy.asarray(a) for a in as_batch(b))
                                                for b in split.epoch(0)))


def diagnostics(config, model, loss_fn):
    """The per-epoch extras the config asks for (quantities, activation statistics, gradient
    flow, histograms), as one function ``run(record, params, probe, writers, step, epoch)``
    that adds them to the epoch's record or the writers."""
    log_quantities = tuple(q.strip() for q in config.log_quantities.split(",") if q.strip())
    flow_fn = jax.jit(lambda p, x, y: gradient_flow(
        lambda p, x, y: loss_fn(model.apply(p, x), y), p, x, y))
    stats_fn = jax.jit(lambda p, x: activation_stats(lambda p, x: model.apply(p, x), p, x))
    quantities_fn = jax.jit(lambda p, x, y: quantities(
        lambda p, x: model.apply(p, x), p, x, y, loss="softmax_cross_entropy",
        which=("grad", *log_quantities)))
    grad_fn = jax.jit(funcbp.grad(lambda p, x, y: loss_fn(model.apply(p, x), y)))

    def run_them(record, params, probe, writers, step, epoch):
        if probe is None:
            return
        x, y = probe
        if log_quantities:
            record["quantities"] = summarize_quantities(quantities_fn(params, x, y))
        if config.activation_stats:
            record["activation_stats"] = stats_fn(params, x).to_dict()
        if config.grad_flow:
            flow = flow_fn(params, x, y)
            record["grad_flow"] = {"layers": flow.to_dict()["layers"],
                                   "vanishing": flow.vanishing_layers,
                                   "exploding": flow.exploding_layers}
        if config.histogram_every and (epoch + 1) % config.histogram_every == 0:
            grads = grad_fn(params, x, y)
            hist = {}
            for prefix, tree in (("params", params), ("grads", grads)):
                for path, leaf in jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]:
                    hist[f"{prefix}/{key_path_str(path)}"] = np.asarray(leaf, np.float64)
            writers.histograms(step, hist)

    return run_them


def say_epoch(say, record, config, compile_time, state) -> None:
    """The epoch's line (and the early-stopping line)."""
    val_text = ""
    if "val_loss" in record:
        val_text = f"  val loss {record['val_loss']:.4f}"
        if "val_accuracy" in record:
            val_text += f"  val acc {record['val_accuracy']:.4f}"
    acc = (f"  acc {record['train_accuracy']:.4f}" if "train_accuracy" in record else "")
    compile_text = (f" (incl. {compile_time:.1f} s compiling)"
                    if compile_time is not None else "")
    say(f"epoch {record['epoch']:3d}/{config.epochs}  loss {record['train_loss']:.4f}{acc}"
        f"{val_text}  lr {record['lr']:.4g}  {record['examples_per_s']:.0f} ex/s  "
        f"{record['epoch_time_s']:.1f} s{compile_text}")
    if state["stopped_early"]:
        say(f"early stopping: no {config.best_metric} improvement for {config.patience} "
            f"epochs (best epoch {state['best_epoch']})")


def finish(config, task, run_dir, history, state, best_params, params, eval_step, host, write,
           metrics_path, t_start, say, log) -> tuple:
    """Plots, the exported parameters, the test split and ``summary.json``; the last line.

    Returns:
      ``(test_params, test)``: the parameters tested and the test record (empty without test
      data).
    """
    if history:
        write(plot_history, history, run_dir)
        flows = [r["grad_flow"]["layers"] for r in history if "grad_flow" in r]
        if flows:
            write(_save_whole, run_dir / "gradient_flow.png",
                  lambda tmp: plot_gradient_flow(flows, str(tmp)))
        acts = [r["activation_stats"] for r in history if "activation_stats" in r]
        if acts:
            write(_save_whole, run_dir / "activation_stats.png",
                  lambda tmp: plot_activation_stats(acts, str(tmp)))
        logged = [dict(r["quantities"], step=r["epoch"]) for r in history if "quantities" in r]
        if logged:
            write(_save_whole, run_dir / "quantities.png",
                  lambda tmp: plot_quantities(logged, str(tmp), title="per epoch"))
    used = "best" if state["stopped_early"] and best_params is not None else "final"
    test_params = best_params if used == "best" else params
    if config.export_safetensors:
        write(save_safetensors, run_dir / "params.safetensors", jax.device_get(host(test_params)))
    test: dict = {}
    if task.data.test is not None:
        t = evaluate_split(eval_step, host(test_params), task.data.test, config.eval_batch_size)
        test = {"type": "test", "test_loss": t["loss"]}
        if "accuracy" in t:
            test["test_accuracy"] = t["accuracy"]
        test.update({
            "params_from": used if used == "final" else f"best (epoch {state['best_epoch']})",
            "epochs_run": history[-1]["epoch"] if history else 0,
            "elapsed_s": round(time.perf_counter() - t_start, 3),
        })
        write(rundir.append_jsonl, metrics_path, test)
    write(rundir.write_json, run_dir / "summary.json", {**(test or {
        "epochs_run": history[-1]["epoch"] if history else 0,
        "elapsed_s": round(time.perf_counter() - t_start, 3)}), "config": config.to_json()})
    if test:
        say(f"test loss {test['test_loss']:.4f} ({test['params_from']} parameters); "
            f"{test['elapsed_s']:.1f} s in all; run directory {run_dir}")
        if "test_accuracy" in test:
            log(f"test accuracy: {test['test_accuracy']:.4f}")
        else:
            log(f"test loss: {test['test_loss']:.4g}")
    elif history:
        last = history[-1]
        log(f"no test data; last epoch: train loss {last['train_loss']:.4g}"
            + (f", val loss {last['val_loss']:.4g}" if "val_loss" in last else ""))
    return test_params, test
