"""Sequence classification: SimpleRNN, GRU and LSTM (funcbp.nn over lax.scan) on noisy waves.

Each sequence is 32 steps of a sine wave with one of four frequencies, a random phase and
amplitude, plus Gaussian noise; the label is the frequency. The recurrent layer reads the
sequence and a Dense layer classifies its last state. Gradients come from funcbp's ``scan``
rule (through ``funcbp.train.make_train_step``). Writes the test accuracies and the
validation curves.

    python -m experiments.sequence_classification [--quick]
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt

from experiments import common
from funcbp import nn, optim
from funcbp.nn.recurrent import GRU, LSTM, SimpleRNN

STUDY = "sequence_classification"
FREQUENCIES = (1.0, 2.0, 3.0, 4.0)  # cycles per sequence


def noisy_waves(key: jax.Array, n: int, steps: int = 32, noise: float = 0.5):
    """``n`` sequences ``(n, steps, 1)`` and their labels (the index of the frequency)."""
    k_label, k_phase, k_amp, k_noise = jax.random.split(key, 4)
    labels = jax.random.randint(k_label, (n,), 0, len(FREQUENCIES))
    freq = jnp.asarray(FREQUENCIES)[labels][:, None]
    phase = jax.random.uniform(k_phase, (n, 1), maxval=2 * jnp.pi)
    amp = jax.random.uniform(k_amp, (n, 1), minval=0.5, maxval=1.5)
    t = jnp.linspace(0.0, 1.0, steps)[None, :]
    x = amp * jnp.sin(2 * jnp.pi * freq * t + phase)
    x = x + noise * jax.random.normal(k_noise, x.shape)
    return x[..., None], labels


def splits(seed: int, n_train: int, n_eval: int) -> common.Splits:
    keys = jax.random.split(jax.random.key(seed), 3)
    (xt, yt), (xv, yv), (xs, ys) = (noisy_waves(k, n) for k, n in
                                    zip(keys, (n_train, n_eval, n_eval), strict=True))
    return common.Splits(xt, yt, xv, yv, xs, ys)


def main(argv: Sequence[str] | None = None) -> dict:
    run = common.parse_args(STUDY, __doc__.splitlines()[0], argv)
    quick = run.quick
    data = splits(0, 256 if quick else 4096, 128 if quick else 1024)
    epochs, hidden = (2, 16) if quick else (15, 64)
    results: dict = {"frequencies": FREQUENCIES, "steps": 32, "hidden": hidden,
                     "epochs": epochs, "optimizer": "adam(3e-3)", "batch_size": 64,
                     "models": {}}
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for name, layer in (("SimpleRNN", SimpleRNN), ("GRU", GRU), ("LSTM", LSTM)):
        model = nn.serial(layer(hidden), nn.Dense(len(FREQUENCIES)))
        _, params = model.init(jax.random.key(1), (1, 32, 1))
        params, hist = common.train(model.apply, params, data, optim.adam(3e-3),
                                    key=jax.random.key(2), batch_size=64, epochs=epochs)
        final = hist["epochs"][-1]
        run.log(f"{name}: test accuracy {final['test_acc']:.4f}")
        results["models"][name] = {"test_acc": final["test_acc"],
                                   "test_loss": final["test_loss"],
                                   "val_acc": [r["val_acc"] for r in hist["epochs"]]}
        ax.plot([r["epoch"] for r in hist["epochs"]], [r["val_acc"] for r in hist["epochs"]],
                label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Noisy-wave frequency (4 classes, 32 steps)")
    ax.legend()
    run.save_figure(fig, "val_accuracy")
    run.write(results)
    return results


if __name__ == "__main__":
    main()
