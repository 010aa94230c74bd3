"""``funcbp check`` records for the call-like primitives beyond jit/custom_jvp/custom_vjp/remat:
``checkpoint_name``, ``closed_call``, ``core.call``, ``device_put``, ``custom_vmap`` and
``linear_call``, and for ``run_state`` (references discharged into values).

jax cannot reverse ``custom_vmap_call`` or ``run_state``, nor ``linear_call`` with respect to
its residual arguments (funcbp differentiates the callee there): those records use float64
central differences.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax._src import core
from jax.ad_checkpoint import checkpoint_name
from jax.custom_batching import custom_vmap
from jax.custom_derivatives import linear_call

from funcbp.autodiff.compat import bind_equation  # jax 0.9 and 0.10 bind calls differently
from funcbp.check.rules import N, P, Sample

S = (3, 4)
F64 = ("float64",)


def _body(a, b):
    return jnp.sin(a) * b, a * a


def _closed_call(x, y):
    return bind_equation(core.closed_call_p, {"call_jaxpr": jax.make_jaxpr(_body)(x, y)},
                         [x * 2.0, y])


def _core_call(x, y):
    return bind_equation(core.call_p, {"call_jaxpr": jax.make_jaxpr(_body)(x, y).jaxpr},
                         [x, y * y])


def _device_put(x, y):
    a, b = jax.device_put((jnp.sin(x), y), jax.devices()[0])
    return a * b + b * b


@custom_vmap
def _sin_times(x, y):
    return jnp.sin(x) * y


@_sin_times.def_vmap
def _sin_times_vmap(axis_size, in_batched, x, y):
    return jnp.sin(x) * y, in_batched[0] or in_batched[1]


def _divide(r, x):
    return x / r


def _divide_transpose(r, ct):
    return ct / r


def _run_state(x, w):
    from jax._src.state.discharge import run_state  # jax.experimental.pallas.run_state

    def body(refs):
        a, b = refs
        b[...] = jnp.tanh(a[...] * b[...])
        a[1:] += b[:-1]
        jax.ref.addupdate(b, 0, a[0] * a[2])
    return run_state(body)((x, w))


def samples() -> list[Sample]:
    """One record per primitive (two where a parameter changes the rule's path)."""
    return [
        Sample("name", "random", lambda x: jnp.sin(checkpoint_name(x * 2.0, "h")) * x, (N(*S),)),
        Sample("closed_call", "random", _closed_call, (N(*S), N(*S))),
        Sample("call", "random", _core_call, (N(*S), N(*S))),
        Sample("device_put", "two operands, to a device", _device_put, (N(*S), N(*S))),
        Sample("device_put", "no device (a copy)",
               lambda x: jax.device_put(jnp.sin(x), may_alias=False) * x, (N(*S),)),
        Sample("custom_vmap_call", "vs finite differences", lambda x, y: _sin_times(x, y) * x,
               (N(*S), N(*S)), F64, reference="fd"),
        Sample("linear_call", "user transpose", lambda x: jnp.sin(linear_call(
            _divide, _divide_transpose, jnp.arange(1.0, 5.0), x)) * x, (N(*S),)),
        Sample("linear_call", "residual, vs finite differences",
               lambda x, r: linear_call(_divide, _divide_transpose, r, x) * x, (N(*S), P(*S)),
               F64, reference="fd"),
        Sample("run_state", "vs finite differences", _run_state, (N(4), N(4)), F64,
               reference="fd"),
    ]
