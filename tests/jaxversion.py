"""The jax features a test needs beyond the oldest jax funcbp supports (``pyproject.toml``).

funcbp runs on jax 0.9 and 0.10 (``funcbp/autodiff/compat.py``). A test of a feature the
installed jax lacks is skipped with a reason naming the feature and the version that added it,
never silently; everything else runs on every version.

    from tests.jaxversion import requires, skip_without

    @requires("erfcx")
    def test_erfcx(): ...

    def test_table(case):
        skip_without(*case.needs)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import jax
import pytest

__all__ = ["FEATURES", "lacks", "missing", "requires", "skip_without"]


def _has_param(fun: Callable, name: str) -> bool:
    return name in inspect.signature(fun).parameters


def _qr_vjp_wide_complete() -> bool:
    try:
        jax.eval_shape(lambda a: jax.vjp(jax.numpy.linalg.qr, a), jax.numpy.ones((2, 3)))
    except NotImplementedError:
        return False
    return True


def _ref_slice_vjp() -> bool:
    def f(x):
        r = jax.new_ref(x)
        r[1:] += r[:-1]
        return r[...]

    x = jax.numpy.ones(3)
    try:
        jax.vjp(f, x)[1](x)
    except ValueError:  # jax 0.9 transposes the sliced update with the wrong shape
        return False
    return True


def _conv_mixed_dtype_vjp() -> bool:
    def f(x, w):
        return jax.lax.conv_general_dilated(x, w, (1,), "SAME",
                                            preferred_element_type=jax.numpy.float32).sum()

    x = jax.ShapeDtypeStruct((1, 1, 2), jax.numpy.bfloat16)
    try:
        jax.eval_shape(jax.grad(f, argnums=(0, 1)), x, x)
    except TypeError:  # jax 0.9: "conv_general_dilated requires ... the same dtypes"
        return False
    return True


#: feature -> (what it is, when jax added or removed it, a probe that says whether it's here)
FEATURES: dict[str, tuple[str, str, Callable[[], bool]]] = {
    "eig_eigvec_derivs": (
        "jax.lax.linalg.eig(enable_eigvec_derivs=True), eigenvector derivatives",
        "added in jax 0.10.0", lambda: _has_param(jax.lax.linalg.eig, "enable_eigvec_derivs")),
    "tridiagonal_perturb_singular": (
        "jax.lax.linalg.tridiagonal_solve(perturb_singular=...)", "added in jax 0.10.0",
        lambda: _has_param(jax.lax.linalg.tridiagonal_solve, "perturb_singular")),
    "erfcx": ("jax.scipy.special.erfcx", "added in jax 0.10.0",
              lambda: hasattr(jax.scipy.special, "erfcx")),
    "qr_vjp_wide_complete": (
        "jax.vjp of a wide (m < n) or complete-mode QR decomposition (the reference)",
        "added in jax 0.10.0", _qr_vjp_wide_complete),
    "ref_slice_vjp": (
        "a working jax.vjp through a sliced in-place update of a reference (r[1:] += ...), "
        "the reference", "jax 0.9 transposes it with the wrong shape; fixed in jax 0.10.0",
        _ref_slice_vjp),
    "conv_mixed_dtype_vjp": (
        "jax.grad of a bfloat16 conv with preferred_element_type=float32 (the reference)",
        "jax 0.9 mixes the dtypes in its own backward conv; fixed in jax 0.10.0",
        _conv_mixed_dtype_vjp),
    "jax_custom_vjp3": ("the option jax_custom_vjp3 (custom_vjp as call_hi_primitive)",
                        "added in jax 0.10.0", lambda: hasattr(jax.config, "jax_custom_vjp3")),
    "legacy_pmap": ("jax.pmap's own primitive xla_pmap (jax_pmap_shmap_merge=False)",
                    "removed in jax 0.10.0", lambda: hasattr(jax.config, "jax_pmap_shmap_merge")),
}

_CACHE: dict[str, bool] = {}


def missing(feature: str) -> str | None:
    """The skip reason if the installed jax lacks ``feature`` (a key of :data:`FEATURES`),
    else None."""
    what, when, probe = FEATURES[feature]
    if feature not in _CACHE:
        _CACHE[feature] = bool(probe())
    if _CACHE[feature]:
        return None
    return f"jax {jax.__version__} lacks {what} ({when})"


def lacks(*features: str) -> str:
    """Why the installed jax cannot run a test needing ``features`` ("" if it can)."""
    return "; ".join(r for r in map(missing, features) if r)


def skip_without(*features: str) -> None:
    """Skips the running test unless the installed jax has every one of ``features``."""
    if reason := lacks(*features):
        pytest.skip(reason)


def requires(*features: str) -> pytest.MarkDecorator:
    """A ``skipif`` mark: the test runs only on a jax that has every one of ``features``."""
    reason = lacks(*features)
    return pytest.mark.skipif(bool(reason), reason=reason)

