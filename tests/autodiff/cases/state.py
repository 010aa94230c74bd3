"""Cases for mutable references: ``jax.new_ref`` (discharged when funcbp traces) and
``run_state`` (discharged by its rule)."""

import jax
import jax.numpy as jnp
from jax import lax
from jax._src.state.discharge import run_state  # exported as jax.experimental.pallas.run_state

from tests.autodiff.cases import Case, args, normal


def _refs(x, w):
    """References read, written and incremented at the top level, in a jit and in a scan."""
    r = jax.new_ref(x)
    r[...] = jnp.sin(r[...]) * w
    r[1:] += r[:-1] * 2.0
    jax.ref.addupdate(r, 0, jnp.sum(w))

    def step(c, _):
        s = jax.new_ref(c)
        s[0] = s[0] * s[1]
        return s[...] * w, None

    y = lax.scan(step, r[...], None, length=2)[0]
    z = jax.jit(lambda a: jax.freeze(_scaled(a, w)))(x)
    return y + z


def _scaled(a, w):
    q = jax.new_ref(a)
    q[...] = q[...] * w
    return q


def _run_state(x, w):
    def body(refs):
        a, b = refs
        b[...] = jnp.tanh(a[...] * b[...])
        a[1:] += b[:-1]
        jax.ref.addupdate(b, 0, a[0] * a[2])
    return run_state(body)((x, w))


def _run_state_by_hand(x, w):
    """The same program with values instead of references."""
    b = jnp.tanh(x * w)
    a = x.at[1:].add(b[:-1])
    return a, b.at[0].add(a[0] * a[2])


CASES = [
    Case("new_ref_get_swap_addupdate", _refs, args(normal(4), normal(4)),
         reference_features=("ref_slice_vjp",)),
    # jax cannot reverse run_state (its linearization fails) nor vmap its jvp: the reference is
    # the same program written with values
    Case("run_state", _run_state, args(normal(4), normal(4)), reference=_run_state_by_hand),
]
