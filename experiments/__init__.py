"""Experiments reproducing results from the backpropagation literature with funcbp's gradients.

Each study is a module runnable as ``python -m experiments.<study> [--quick]``; it writes
``experiments/results/<study>/results.json`` and PNG figures, and (in full mode, or with
``--publish``) copies the figures used by ``docs/experiments/<study>.md`` into
``docs/experiments/figures/``. ``python -m experiments [--quick]`` runs them all.
"""

STUDIES = (
    "digits",
    "vanishing",
    "exploding",
    "initialisation",
    "optimisers",
    "batch_size",
    "regularisation",
    "normalisation",
    "fashion",
    "noise_scale",
    "dp_sgd",
)

__all__ = ["STUDIES"]
