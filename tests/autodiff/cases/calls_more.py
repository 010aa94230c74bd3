"""Cases for the remaining call-like primitives: checkpoint_name, closed_call, core.call,
device_put, custom_vmap, linear_call."""

import jax
import jax.numpy as jnp
from jax._src import core
from jax.ad_checkpoint import checkpoint_name
from jax.custom_batching import custom_vmap
from jax.custom_derivatives import linear_call

from funcbp.autodiff.compat import bind_equation  # jax 0.9 and 0.10 bind calls differently
from tests.autodiff.cases import Case, args, normal, positive


def _body(a, b):
    return jnp.sin(a) * b, a * a


def _closed_call(x, y):
    jaxpr = jax.make_jaxpr(_body)(x, y)
    return bind_equation(core.closed_call_p, {"call_jaxpr": jaxpr}, [x * 2.0, y])


def _core_call(x, y):
    jaxpr = jax.make_jaxpr(_body)(x, y).jaxpr
    return bind_equation(core.call_p, {"call_jaxpr": jaxpr}, [x, y * y])


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


CASES = [
    Case("name_checkpoint_name", lambda x: jnp.sin(checkpoint_name(x * 2.0, "h")) * x,
         args(normal(3, 4))),
    Case("closed_call", _closed_call, args(normal(3), normal(3))),
    Case("core_call", _core_call, args(normal(3), normal(3))),
    Case("device_put_two_operands",
         lambda x, y: sum(v * v for v in jax.device_put((jnp.sin(x), y), jax.devices()[0])),
         args(normal(3), normal(3))),
    # jax.vjp cannot reverse custom_vmap_call (its linearization fails): the reference is the
    # function without custom_vmap
    Case("custom_vmap_call", lambda x, y: _sin_times(x, y) * x, args(normal(3), normal(3)),
         reference=lambda x, y: jnp.sin(x) * y * x),
    # the user's transpose gives the linear input's cotangent; jax.vjp uses it too
    Case("linear_call_user_transpose",
         lambda x: jnp.sin(linear_call(_divide, _divide_transpose, jnp.arange(1.0, 4.0), x)) * x,
         args(normal(3))),
    # funcbp also differentiates the residual (jax refuses): the plain division is the reference
    Case("linear_call_residual", lambda x, r: linear_call(_divide, _divide_transpose, r, x) * x,
         args(normal(3), positive(3)), reference=lambda x, r: x / r * x),
]
