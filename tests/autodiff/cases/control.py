"""Cases for control flow: scan (GRU/LSTM cells, pytrees, reverse, nested), fori_loop, cond,
switch, select_n over pytrees, and while loops off the gradient path.

(The SimpleRNN cell is covered by tests/nn/test_recurrent.py.)
"""

import jax
import jax.numpy as jnp
from jax import lax

from tests.autodiff.cases import Case, args, normal


def _gru(wi, wh, b, h0, xs):
    """A GRU cell (gates z, r and candidate n) over lax.scan."""
    def cell(h, x):
        gi, gh = x @ wi + b, h @ wh
        zi, ri, ni = jnp.split(gi, 3, axis=-1)
        zh, rh, nh = jnp.split(gh, 3, axis=-1)
        z, r = jax.nn.sigmoid(zi + zh), jax.nn.sigmoid(ri + rh)
        n = jnp.tanh(ni + r * nh)
        h = (1 - z) * n + z * h
        return h, h
    return lax.scan(cell, h0, xs)[1].sum(0)


def _lstm(wi, wh, b, h0, c0, xs):
    """An LSTM cell with a (h, c) tuple carry."""
    def cell(carry, x):
        h, c = carry
        i, f, g, o = jnp.split(x @ wi + h @ wh + b, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h = jax.nn.sigmoid(o) * jnp.tanh(c)
        return (h, c), h
    (h, c), hs = lax.scan(cell, (h0, c0), xs)
    return h, c, hs


def _pytree_carry(w, a, b, xs):
    """A dict carry with an unused-by-output entry, a passthrough entry and an int counter."""
    def body(carry, x):
        s = jnp.sin(carry["s"] * w) + x["u"]
        t = carry["t"] * x["v"]
        return {"s": s, "t": t, "keep": carry["keep"], "n": carry["n"] + 1}, {"y": s * t}
    init = {"s": a, "t": b, "keep": a * 2.0, "n": jnp.int32(0)}
    out, ys = lax.scan(body, init, {"u": xs, "v": jnp.cos(xs)})
    return out["s"], out["t"], out["keep"], ys["y"]


def _reverse(w, h0, xs):
    def body(h, x):
        h = jnp.tanh(h * w + x)
        return h, h * x
    return lax.scan(body, h0, xs, reverse=True)


def _length_no_xs(w, h0):
    """A scan with no xs (only length) whose ys stack the carry."""
    return lax.scan(lambda h, _: (jnp.sin(h) * w, h), h0, None, length=5)


def _unrolled(w, h0, xs):
    return lax.scan(lambda h, x: (jnp.tanh(h @ w + x), jnp.exp(-h)), h0, xs, unroll=2)


def _nested(w, h0, xs):
    """A scan over rows whose body scans over columns; the inner scan reads the outer carry."""
    def outer(h, row):
        def inner(g, x):
            g = jnp.tanh(g * w + x * h)
            return g, g
        g, gs = lax.scan(inner, h, row)
        return h + g, gs.sum()
    return lax.scan(outer, h0, xs)


def _invariant_hoisted(w, v, h0, xs):
    """Loop-invariant work inside the body (w.T, exp(v)) reads only the scan's constants."""
    def body(h, x):
        return jnp.tanh(h @ w.T + jnp.exp(v) * x), None
    return lax.scan(body, h0, xs)[0]


def _fori(w, x):
    """fori_loop with Python-int bounds lowers to a scan with an int counter carry."""
    return lax.fori_loop(0, 4, lambda i, c: jnp.sin(c * w) + i * 0.1, x)


def _jit_and_cond_in_scan(w, h0, xs):
    inner = jax.jit(lambda h, x: jnp.tanh(h * w + x))

    def body(h, x):
        h = inner(h, x)
        h = lax.cond(jnp.sum(h) > 0, lambda a: a * 2.0, jnp.sin, h)
        return h, h
    return lax.scan(body, h0, xs)


def _checkpoint_in_scan(w, h0, xs):
    step = jax.checkpoint(lambda h, x: jnp.tanh(h @ w + x))
    return lax.scan(lambda h, x: (step(h, x), h.sum()), h0, xs)


def _cond(p, x, y):
    return lax.cond(p.sum() > 0, lambda a, b: jnp.sin(a) * b, lambda a, b: a + jnp.exp(b), x, y)


def _switch(x, y):
    index = jnp.argmax(x[:, 0]) % 3
    branches = [lambda a, b: a * b, lambda a, b: jnp.tanh(a), lambda a, b: (a - b) ** 2]
    return lax.switch(index, branches, x, y)


def _switch_pytree(x, y):
    """A switch with a dict operand and a tuple output; one branch ignores an operand."""
    def b0(d):
        return d["a"] * 2.0, jnp.zeros_like(d["b"])

    def b1(d):
        return jnp.sin(d["a"]), d["a"] * d["b"]
    return lax.switch((x[0, 0] > 0).astype(jnp.int32), [b0, b1], {"a": x, "b": y})


def _select_pytree(m, x, y):
    """select_n over a pytree (jnp.where leaf by leaf)."""
    pick = m > 0
    a = {"p": x, "q": (x * y, jnp.sin(y))}
    b = {"p": y, "q": (x + y, jnp.cos(x))}
    return jax.tree.map(lambda s, t: jnp.where(pick, s, t), a, b)


def _while_off_path(x):
    """while loops that nothing differentiated flows into: an int counter and a float one."""
    n = lax.while_loop(lambda i: i * i < 20, lambda i: i + 1, 0)
    z = lax.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 1.5),
                       (0, jnp.ones(x.shape, x.dtype)))[1]
    return jnp.tanh(x) * n * z


CASES = [
    Case("scan_gru", _gru, args(normal(3, 12, scale=0.5), normal(4, 12, scale=0.5), normal(12),
                                normal(2, 4), normal(5, 2, 3))),
    Case("scan_lstm_tuple_carry", _lstm, args(normal(3, 16, scale=0.5),
                                              normal(4, 16, scale=0.5), normal(16), normal(2, 4),
                                              normal(2, 4), normal(5, 2, 3))),
    Case("scan_pytree_carry_int_counter", _pytree_carry,
         args(normal(3), normal(3), normal(3), normal(4, 3))),
    Case("scan_reverse", _reverse, args(normal(3), normal(3), normal(6, 3))),
    Case("scan_length_no_xs", _length_no_xs, args(normal(3), normal(3))),
    Case("scan_unroll", _unrolled, args(normal(3, 3, scale=0.5), normal(2, 3), normal(5, 2, 3))),
    Case("scan_nested", _nested, args(normal(3, scale=0.5), normal(3), normal(4, 3, 3))),
    Case("scan_invariant_hoisted", _invariant_hoisted,
         args(normal(3, 3), normal(3), normal(2, 3), normal(4, 2, 3))),
    Case("fori_loop_static", _fori, args(normal(3), normal(3))),
    Case("scan_jit_cond_inside", _jit_and_cond_in_scan, args(normal(3), normal(3), normal(4, 3)),
         fd=False),  # the cond's predicate is a kink
    Case("scan_checkpoint_inside", _checkpoint_in_scan,
         args(normal(3, 3, scale=0.5), normal(2, 3), normal(4, 2, 3))),
    Case("cond", _cond, args(normal(3), normal(3, 4), normal(3, 4))),
    Case("switch", _switch, args(normal(3, 4), normal(3, 4))),
    Case("switch_pytree", _switch_pytree, args(normal(3, 4), normal(3, 4))),
    Case("select_n_pytree", _select_pytree, args(normal(3, 4), normal(3, 4), normal(3, 4)),
         fd=False),  # m is differentiated too, and the selection jumps with its sign
    Case("while_off_gradient_path", _while_off_path, args(normal(3, 4))),
]
