"""The rule spec table: one record per operation, shared by every rule test.

Each family module in this package (``elementwise.py``, ``conv.py``, ...) defines ``CASES``, a
list of :class:`Case`. ``tests/autodiff/test_rules.py`` runs every case eager and under
``jax.jit``, in float32 and float64, against ``jax.vjp`` with a random output cotangent, and
against central finite differences in float64; it also fails when a registered rule appears in
no case's jaxpr.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

Sampler = Callable[[jax.Array, jnp.dtype], tuple]


@dataclass(frozen=True)
class Case:
    """One operation to differentiate.

    Attributes:
      name: test id.
      fun: the function; its float positional arguments are differentiated.
      sample: ``sample(key, dtype) -> args``; fresh random inputs for every run.
      rtol, atol: float32 tolerances against jax (float64 uses 1e-10 / 1e-12 unless given).
      fd: also check against float64 central finite differences (off for kinks, ties).
      dtypes: float dtypes the case runs in.
      x64_rtol: float64 tolerance against jax.
      reference: ``"vjp"`` (``jax.vjp``) or ``"jvp"``: for primitives jax differentiates in
        forward mode only (generic ``reduce_window``), the Jacobian built column by column with
        ``jax.jvp`` and transposed; or a function computing the same values that ``jax.vjp``
        can differentiate, for primitives jax cannot differentiate at all (``pmax``).
      jax_features: features of jax newer than funcbp's floor that the function needs (keys of
        ``tests/jaxversion.FEATURES``): on a jax without them the case is skipped, with reason.
      reference_features: the same, needed only by the ``jax.vjp`` reference: on a jax without
        them the comparison with jax is skipped, finite differences still run.
    """

    name: str
    fun: Callable
    sample: Sampler
    rtol: float = 2e-5
    atol: float = 1e-6
    fd: bool = True
    dtypes: tuple = ("float32", "float64")
    x64_rtol: float = 1e-9
    fd_eps: float = 1e-5
    tags: tuple = field(default_factory=tuple)
    reference: str | Callable = "vjp"
    jax_features: tuple = ()
    reference_features: tuple = ()


def normal(*shape, scale=1.0):
    """Sampler helper: standard normal values of ``shape``."""
    def draw(key, dtype):
        return scale * jax.random.normal(key, shape, dtype)
    return draw


def uniform(lo, hi, *shape):
    def draw(key, dtype):
        return jax.random.uniform(key, shape, dtype, lo, hi)
    return draw


def positive(*shape):
    return uniform(0.5, 2.0, *shape)


def args(*draws):
    """Combines per-argument draws into a sampler; non-callables are passed through as is."""
    def sample(key, dtype):
        keys = jax.random.split(key, len(draws))
        return tuple(d(k, dtype) if callable(d) else d for d, k in zip(draws, keys, strict=True))
    return sample


def all_cases() -> list[Case]:
    """Every case of every family module in this package."""
    cases = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        cases.extend(getattr(module, "CASES", []))
    names = [c.name for c in cases]
    dupes = {n for n in names if names.count(n) > 1}
    assert not dupes, f"duplicate case names: {sorted(dupes)}"
    return cases
