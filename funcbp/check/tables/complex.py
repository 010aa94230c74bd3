"""``funcbp check`` records for complex values (rules registered with ``handles_complex=True``).

The differentiated inputs are real pairs ``(x, y)`` made into ``z = x + iy`` inside the sample,
and complex outputs get complex random cotangents, so every record checks jax's convention
(the transpose of the real-linear JVP under ``Re(u v)``) while the comparison stays on real
arrays.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from funcbp.check.rules import ZEROS, N, P, Sample

S = (3, 4)


def _z(x, y):
    return lax.complex(x, y)


def _on_z(fn):
    """``fn`` of ``z = x + iy``, as a function of the real pair."""
    return lambda x, y: fn(_z(x, y))


def _pair(prim, label, fn, dx=None, dy=None):
    return Sample(prim, label, _on_z(fn), (dx or N(*S), dy or N(*S)))


def samples() -> list[Sample]:
    """Complex-valued records: one per complex-aware rule family, plus the complex parts."""
    return [
        _pair("real", "complex", jnp.real),
        _pair("imag", "complex", jnp.imag),
        _pair("conj", "complex", lambda z: jnp.conj(z) * z[0]),
        Sample("conj", "of a real value", lambda x: lax.conj(x) * (1 - 2j), (N(*S),)),
        Sample("complex", "random", lambda x, y: lax.complex(x, y) ** 2, (N(*S), N(*S))),
        Sample("complex", "broadcast", lambda x, y: lax.complex(x, y) * (2 + 1j), (N(*S), N())),
        _pair("abs", "complex", jnp.abs),
        _pair("abs", "complex zeros", jnp.abs, ZEROS(*S), ZEROS(*S)),
        Sample("abs", "complex intermediate of a real input",
               lambda x: jnp.sum(jnp.abs(x * (1 + 2j)) ** 2), (N(*S),)),
        _pair("sign", "complex", lambda z: jnp.sign(z) * z),
        Sample("convert_element_type", "real to complex", lambda x: x.astype(
            jnp.complex64 if x.dtype == jnp.float32 else jnp.complex128) * (1 - 1j), (N(*S),)),
        _pair("mul", "complex", lambda z: z * z[::-1]),
        _pair("div", "complex", lambda z: z / (z[::-1] + 3.0)),
        _pair("pow", "complex", lambda z: lax.pow(z + 2.0, z * 0.5)),
        _pair("integer_pow", "complex", lambda z: z ** 3),
        _pair("exp", "complex", jnp.exp),
        _pair("log", "complex", jnp.log, P(*S), N(*S)),
        _pair("sqrt", "complex", jnp.sqrt, P(*S), N(*S)),
        _pair("tanh", "complex", jnp.tanh),
        _pair("dot_general", "complex", lambda z: z @ z.T),
        _pair("reduce_sum", "complex", lambda z: jnp.sum(z, 1)),
        _pair("reduce_prod", "complex", lambda z: jnp.prod(z, 1)),
        _pair("gather", "complex", lambda z: z[jnp.array([0, 2, 2])]),
    ]
