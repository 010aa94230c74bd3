"""Cases for call-like primitives: nested jit, custom_jvp, custom_vjp, remat, barriers."""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from tests.autodiff.cases import Case, args, normal
from tests.autodiff.cases.elementwise import ties


@jax.custom_jvp
def softclip(x, limit):
    """A user function with a custom JVP whose rule closes over a traced argument."""
    return limit * jnp.tanh(x / limit)


@softclip.defjvp
def _softclip_jvp(primals, tangents):
    x, limit = primals
    dx, dlimit = tangents
    y = softclip(x, limit)
    t = jnp.tanh(x / limit)
    return y, dx * (1 - t * t) + dlimit * (t - (x / limit) * (1 - t * t))


@jax.custom_vjp
def scaled_square(x, s):
    return s * x * x


def _scaled_square_fwd(x, s):
    return s * x * x, (x, s)


def _scaled_square_bwd(res, ct):
    x, s = res
    return 2 * s * x * ct, jnp.sum(x * x * ct).reshape(jnp.shape(s))


scaled_square.defvjp(_scaled_square_fwd, _scaled_square_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def clip_gradient(x, bound):
    return x


def _clip_fwd(x, bound):
    return x, None


def _clip_bwd(bound, _, ct):
    return (jnp.clip(ct, -bound, bound),)


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


def _nested_jit(x, y):
    inner = jax.jit(lambda a, b: jnp.sin(a) * b)
    return jax.jit(lambda a: inner(a, y) + inner(y, a))(x)


def _one_device_sharding():
    import numpy as np
    from jax.sharding import Mesh, NamedSharding
    from jax.sharding import PartitionSpec as P

    return NamedSharding(Mesh(np.array(jax.devices()[:1]), ("data",)), P())


def _custom_vjp3_square():
    """scaled_square defined with jax_custom_vjp3 on (decided when the function is defined):
    calls to it are call_hi_primitive equations. On a jax without the option (0.9), the same
    function as a hi-level primitive written by hand, which is what the option makes of it."""
    if not hasattr(jax.config, "jax_custom_vjp3"):
        return _hi_scaled_square
    previous = jax.config.jax_custom_vjp3
    jax.config.update("jax_custom_vjp3", True)
    try:
        f = jax.custom_vjp(lambda x, s: s * x * x)
        f.defvjp(_scaled_square_fwd, _scaled_square_bwd)
    finally:
        jax.config.update("jax_custom_vjp3", previous)
    return f


def _hi_scaled_square(x, s):
    from jax._src.hijax import VJPHiPrimitive

    class ScaledSquare(VJPHiPrimitive):
        def __init__(self, x_aval, s_aval):
            self.in_avals, self.out_aval, self.params = (x_aval, s_aval), x_aval, {}
            super().__init__()

        def expand(self, x, s):
            return scaled_square(x, s)

        def vjp_fwd(self, nzs_in, x, s):
            return _scaled_square_fwd(x, s)

        def vjp_bwd_retval(self, res, ct):
            return _scaled_square_bwd(res, ct)

    return ScaledSquare(jax.typeof(x), jax.typeof(s))(x, s)


def _sin_times_x(remat):
    """x sin x as a custom_vjp whose fwd is (or is not) wrapped in remat_opt."""
    f = jax.custom_vjp(lambda x: jnp.sin(x) * x)
    f.defvjp(lambda x: (jnp.sin(x) * x, (jnp.cos(x), x)),
             lambda r, g: ((r[0] * r[1] + jnp.sin(r[1])) * g,), optimize_remat=remat)
    return f


def _gradient_program(f):
    """funcbp's gradient of sum(f(x)^2): a program that runs f's fwd (jax cannot
    differentiate a remat_opt fwd; the plain fwd computes the same values)."""
    import funcbp

    return lambda x: funcbp.grad(lambda v: jnp.sum(f(v) ** 2))(x)


CASES = [
    Case("jit_nested", _nested_jit, args(normal(3, 4), normal(3, 4))),
    Case("custom_jvp_relu_kink", lambda x: jax.nn.relu(x) * 3.0, args(ties(3, 4)), fd=False),
    Case("custom_jvp_user_rule", softclip,
         args(normal(3, 4, scale=3.0), lambda k, d: 1.5 + jax.random.uniform(k, (3, 4), d))),
    Case("custom_jvp_logsumexp_stable", lambda x: jax.nn.logsumexp(x * 1e4, axis=0),
         args(normal(3, 4)), fd=False),
    Case("custom_vjp_user_rule", scaled_square, args(normal(3, 4), normal())),
    Case("custom_vjp_nondiff_arg", lambda x: clip_gradient(x * 3.0, 0.5) * x, args(normal(3, 4)),
         fd=False),
    Case("custom_vjp3_user_rule", _custom_vjp3_square(), args(normal(3, 4), normal())),
    Case("remat_opt_fwd_differentiated", _gradient_program(_sin_times_x(True)), args(normal(3)),
         reference=_gradient_program(_sin_times_x(False))),
    Case("remat_checkpoint", jax.checkpoint(lambda x, w: jnp.tanh(x @ w) @ w.T),
         args(normal(3, 4), normal(4, 4))),
    Case("sharding_constraint",
         lambda x: jnp.sin(jax.lax.with_sharding_constraint(x * 2.0, _one_device_sharding())),
         args(normal(3, 4))),
    Case("reshard", lambda x: jnp.sin(jax.sharding.reshard(x * 2.0, _one_device_sharding())),
         args(normal(3, 4))),
    Case("optimization_barrier", lambda x, y: sum(lax.optimization_barrier((x * 2.0, y))),
         args(normal(3), normal(3))),
]
