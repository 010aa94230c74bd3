"""VJP rules for triangular factorisations and linear solves.

``lu``, ``triangular_solve``, ``cholesky``, ``qr``, ``tridiagonal_solve`` and
``custom_linear_solve``: together they carry ``jnp.linalg.solve/inv/det/slogdet/cholesky/qr``,
``jax.scipy.linalg.solve_triangular/cho_solve/lu_solve/expm`` and ``lax.linalg`` itself. The
spectral decompositions (``eigh``, ``eig``, ``svd``) live in ``spectral.py``.

Each rule is the transpose of the derivative of its factorisation (De Hoog et al. for LU,
Murray 2016 for Cholesky, Walter & Lehmann / Townsend for QR), written with triangular solves
instead of inverses, and evaluated from the forward outputs: nothing is factorised twice. The
derivatives are those jax defines, so results agree with ``jax.vjp``; in particular a
factorisation whose input must be symmetric (``cholesky``) is differentiated as a function of the
whole matrix, not of the one triangle LAPACK reads, as in jax (``jnp.linalg.cholesky``
symmetrises its input, which symmetrises the cotangent). Complex values follow jax's
convention: cotangents are transposes (not adjoints) of the real-linear JVP.

Integer outputs (``lu``'s pivots and permutation, ``qr``'s column pivots) carry no cotangent;
``lu_pivots_to_permutation`` has integer inputs only and needs no rule.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax._src.lax.control_flow.solves import linear_solve_p

from funcbp.autodiff.rules import NO_RULE_HINTS, UnsupportedPrimitiveError, vjp_rule

__all__ = ["cholesky_vjp", "custom_linear_solve_vjp", "lu_vjp", "qr_vjp", "triangular_solve_vjp",
           "tridiagonal_solve_vjp"]

linalg = lax.linalg
_HIGHEST = lax.Precision.HIGHEST


def _interp():
    from funcbp.autodiff import interpreter  # the rules package is imported by the interpreter

    return interpreter


# --- small helpers shared with spectral.py ------------------------------------------------------

def mm(a, b):
    """Batched matmul at full precision (factorisation gradients amplify rounding)."""
    return jnp.matmul(a, b, precision=_HIGHEST)


def mT(x):
    """Transpose of the last two dimensions (the bilinear transpose: no conjugation)."""
    return jnp.swapaxes(x, -1, -2)


def mH(x):
    """Conjugate transpose of the last two dimensions."""
    return jnp.conj(jnp.swapaxes(x, -1, -2))


def diag(v):
    """Batched diagonal matrix from the last axis of ``v``."""
    return v[..., :, None] * jnp.eye(v.shape[-1], dtype=v.dtype)


def eye_like(x, n=None):
    """The n x n identity (n: ``x``'s last dimension by default) in ``x``'s dtype."""
    n = x.shape[-1] if n is None else n
    return jnp.eye(n, dtype=x.dtype)


def refuse(primitive: str, parameter: str, why: str) -> UnsupportedPrimitiveError:
    """The error for a parameter combination that has no derivative (named for the user)."""
    return UnsupportedPrimitiveError(f"'{primitive}' with {parameter}: {why}")


def unpermute(x, perm, axis):
    """``y`` with ``y.take(perm, axis) == x``: undoes a gather by the permutation ``perm``."""
    inv = jnp.argsort(perm, axis=-1)
    idx = inv[..., :, None] if axis == -2 else inv[..., None, :]
    return jnp.take_along_axis(x, idx, axis=axis)


def solve(a, b):
    """a^-1 b by LU with row pivots and two triangular solves, all with funcbp rules.

    Not ``jnp.linalg.solve``: that builds a ``custom_linear_solve`` whose transposed map jax
    derives with ``linear_transpose``, and jax's autodiff never runs on funcbp's gradient path.
    """
    lu, _, perm = linalg.lu(a)
    y = jnp.take_along_axis(b, perm[..., :, None], axis=-2)
    y = linalg.triangular_solve(lu, y, left_side=True, lower=True, unit_diagonal=True)
    return linalg.triangular_solve(lu, y, left_side=True, lower=False)


def _zero_sized(x):
    return any(d == 0 for d in x.shape[-2:])


# --- triangular_solve -----------------------------------------------------------------------------

@vjp_rule(linalg.triangular_solve_p, handles_complex=True)
def triangular_solve_vjp(ct, a, b, *, out, needs, left_side, lower, transpose_a, conjugate_a,
                         unit_diagonal):
    """op(A) X = B: B̄ = op(A)^-T X̄; Ā = -op^T(B̄ X^T) (left) or -op^T(X^T B̄) (right), masked
    to the triangle the solve reads (without the diagonal when ``unit_diagonal``)."""
    b_bar = linalg.triangular_solve(a, ct, left_side=left_side, lower=lower,
                                    transpose_a=not transpose_a, conjugate_a=conjugate_a,
                                    unit_diagonal=unit_diagonal)

    def a_bar():
        g = -(mm(b_bar, mT(out)) if left_side else mm(mT(out), b_bar))
        if conjugate_a:
            g = jnp.conj(g)  # the transpose of conj is conj (a no-op for real values)
        if transpose_a:
            g = mT(g)
        k = 1 if unit_diagonal else 0
        return jnp.tril(g, -k) if lower else jnp.triu(g, k)

    return (a_bar if needs[0] else None, b_bar)


# --- lu -----------------------------------------------------------------------------------------

def _lu_factors(lu):
    """Square unit-lower L (m x m) and upper U (n x n) of a packed m x n LU factorisation, the
    rectangular one completed with identity blocks (De Hoog, Anderssen & Lukas)."""
    m, n = lu.shape[-2:]
    k = min(m, n)
    zeros = [(0, 0)] * (lu.ndim - 2)
    lower = jnp.pad(jnp.tril(lu[..., :, :k], -1), zeros + [(0, 0), (0, m - k)])
    lower = lower + eye_like(lu, m)
    upper = jnp.pad(jnp.triu(lu[..., :k, :]), zeros + [(0, n - k), (0, 0)])
    upper = upper + jnp.pad(jnp.eye(n - k, dtype=lu.dtype), ((k, 0), (k, 0)))
    return lower, upper


@vjp_rule(linalg.lu_p, handles_complex=True)
def lu_vjp(cts, x, *, out, **params):
    """PA = LU packed in one matrix C: with X̄ = tril(L^T C̄, -1) + triu(C̄ U^T),
    Ā = P^T L^-T X̄ U^-T."""
    ct = cts[0]
    if ct is None:  # pivots and permutation are integers: no cotangent
        return (None,)
    lu, _, perm = out
    if _zero_sized(x):
        return (jnp.zeros_like(ct),)
    lower, upper = _lu_factors(lu)
    x_bar = jnp.tril(mm(mT(lower), ct), -1) + jnp.triu(mm(ct, mT(upper)))
    y = linalg.triangular_solve(lower, x_bar, left_side=True, lower=True, transpose_a=True,
                                unit_diagonal=True)
    y = linalg.triangular_solve(upper, y, left_side=False, lower=False, transpose_a=True)
    return (unpermute(y, perm, axis=-2),)


# --- cholesky -----------------------------------------------------------------------------------

def _phi(x):
    """Lower triangle with the diagonal halved (the Cholesky derivative's projection)."""
    return jnp.tril(x) * (1 - 0.5 * eye_like(x))


@vjp_rule(linalg.cholesky_p, handles_complex=True)
def cholesky_vjp(ct, x, *, out, **params):
    """A = L L^H: Ā = L^-T Φ(L^T L̄) conj(L)^-1, Φ = lower triangle with halved diagonal."""
    low = jnp.tril(out)  # the primitive may leave the input in the upper triangle
    y = _phi(mm(mT(low), ct))
    z = linalg.triangular_solve(low, y, left_side=True, lower=True, transpose_a=True)
    return (linalg.triangular_solve(low, z, left_side=False, lower=True, conjugate_a=True),)


# --- qr -----------------------------------------------------------------------------------------

def _thin_qr_vjp(q, r, q_bar, r_bar):
    """X = QR with Q m x n, R n x n upper: with G = R̄ R^T - Q^T Q̄ and C̄ = G's upper triangle
    mirrored (C̄ = triu(G, 1) + Re diag(G) + tril(G^H, -1)), X̄ = (Q̄ + conj(Q) C̄) R^-T."""
    g = jnp.zeros(r.shape, r.dtype)
    if r_bar is not None:
        g = g + mm(r_bar, mT(r))
    if q_bar is not None:
        g = g - mm(mT(q), q_bar)
    if jnp.iscomplexobj(g):
        # R's diagonal is real: the imaginary part of dC's diagonal moves into dQ (jax's gauge)
        c_bar = (jnp.triu(g, 1) + jnp.tril(mH(g), -1)
                 + diag(jnp.real(jnp.diagonal(g, axis1=-2, axis2=-1)).astype(g.dtype)))
    else:
        c_bar = jnp.triu(g) + jnp.tril(mT(g), -1)
    y = mm(jnp.conj(q), c_bar)
    y = y if q_bar is None else q_bar + y
    return linalg.triangular_solve(r, y, left_side=False, lower=False, transpose_a=True)


def _full_qr_q_bar(q, q_bar, n):
    """The cotangent of Q[..., :, :n] that a full (m x m) Q's cotangent amounts to, m > n.

    The last m - n columns of a full Q are fixed by the Householder completion; following the
    derivative jax uses (Roberts & Roberts, arXiv:2409.13374, eqs. 32-33), dQ_mp = dQ_mn Z^T -
    (Q_mn + Q_mp Z)(dQ_pn - Z dQ_nn)^T with Z = Q_pn (Q_nn - I)^-1. Transposed, Q̄_mp adds
    Q̄_mp conj(Z) to Q̄_mn, E = -conj(Q̄_mp^T (Q_mn + Q_mp Z)) to its last m - n rows and
    -Z^T E to its first n.
    """
    q_mn, q_mp = q[..., :, :n], q[..., :, n:]
    q_nn, q_pn = q_mn[..., :n, :], q_mn[..., n:, :]
    bar_mn, bar_mp = q_bar[..., :, :n], q_bar[..., :, n:]
    # Z^T solves (Q_nn - I)^T Z^T = Q_pn^T
    z = mT(solve(mT(q_nn - eye_like(q_nn)), mT(q_pn)))
    e = -jnp.conj(mm(mT(bar_mp), q_mn + mm(q_mp, z)))
    fold = jnp.concatenate([-mm(mT(z), e), e], axis=-2)
    return bar_mn + mm(bar_mp, jnp.conj(z)) + fold


@vjp_rule(linalg.qr_p, handles_complex=True)
def qr_vjp(cts, x, *, out, pivoting, full_matrices, use_magma=None, **params):
    """X P = QR: the thin rule X̄ = (Q̄ + conj(Q) C̄) R^-T (see ``_thin_qr_vjp``); a wide
    X P = [X1 X2] adds conj(X2 R̄2^T) to Q̄ and gives X̄2 = conj(Q) R̄2; a full Q folds its extra
    columns back; column pivots are undone at the end. ``use_magma`` picks an implementation,
    not a value."""
    q_bar, r_bar = cts[0], cts[1]
    q, r = out[0], out[1]
    if _zero_sized(x):
        return (jnp.zeros_like(x),)
    m, n = x.shape[-2:]
    if m < n:
        r1 = r[..., :, :m]
        r1_bar = None if r_bar is None else r_bar[..., :, :m]
        x2_bar = None
        if r_bar is not None:
            r2_bar = r_bar[..., :, m:]
            # R2 = Q^H X2 with X2 the trailing columns of X P (jax 0.10 takes them from X
            # unpermuted, which is off under pivoting)
            xp = jnp.take_along_axis(x, out[2][..., None, :], axis=-1) if pivoting else x
            extra = jnp.conj(mm(xp[..., :, m:], mT(r2_bar)))
            q_bar = extra if q_bar is None else q_bar + extra
            x2_bar = mm(jnp.conj(q), r2_bar)
        x1_bar = _thin_qr_vjp(q, r1, q_bar, r1_bar)
        x_bar = jnp.concatenate(
            [x1_bar, jnp.zeros(x.shape[:-1] + (n - m,), x.dtype) if x2_bar is None else x2_bar],
            axis=-1)
    else:
        if full_matrices and m > n:
            if q_bar is not None:
                q_bar = _full_qr_q_bar(q, q_bar, n)
            q, r = q[..., :, :n], r[..., :n, :]
            r_bar = None if r_bar is None else r_bar[..., :n, :]
        x_bar = _thin_qr_vjp(q, r, q_bar, r_bar)
    if pivoting:
        x_bar = unpermute(x_bar, out[2], axis=-1)
    return (x_bar,)


# --- tridiagonal_solve --------------------------------------------------------------------------

def _shift(x, down):
    """x moved one place along the last axis, a zero entering at the vacated end."""
    pad = [(0, 0)] * (x.ndim - 1) + [(1, 0) if down else (0, 1)]
    return jnp.pad(x[..., :-1] if down else x[..., 1:], pad)


@vjp_rule(linalg.tridiagonal_solve_p, handles_complex=True)
def tridiagonal_solve_vjp(ct, dl, d, du, b, *, out, needs, **params):
    """T X = B: B̄ = T^-T X̄ (T^T's sub-diagonal is du moved down, its super-diagonal dl moved
    up), d̄ = -Σ_k B̄ X, dl̄_i = -Σ_k B̄_i X_{i-1}, dū_i = -Σ_k B̄_i X_{i+1}; the unused dl[0] and
    du[-1] get zero. ``params`` (``perturb_singular``, from jax 0.10; absent in 0.9, where the
    solve never perturbs) applies to the transposed solve too."""
    if d.shape[-1] == 0:
        return (None, None, None, jnp.zeros_like(ct))
    b_bar = linalg.tridiagonal_solve(_shift(du, down=True), d, _shift(dl, down=False), ct,
                                     **params)
    d_bar = -jnp.sum(b_bar * out, axis=-1)
    pad = [(0, 0)] * (d.ndim - 1)
    dl_bar = jnp.pad(-jnp.sum(b_bar[..., 1:, :] * out[..., :-1, :], axis=-1), pad + [(1, 0)])
    du_bar = jnp.pad(-jnp.sum(b_bar[..., :-1, :] * out[..., 1:, :], axis=-1), pad + [(0, 1)])
    return (dl_bar, d_bar, du_bar, b_bar)


# --- custom_linear_solve --------------------------------------------------------------------------

@vjp_rule(linear_solve_p, handles_complex=True)
def custom_linear_solve_vjp(cts, *args, out, needs, const_lengths, jaxprs):
    """x = A^-1 b, A given by ``matvec``: b̄ = A^-T x̄, solved by the user's ``transpose_solve``
    (``solve`` when symmetric); the matvec's operands get the pullback of -b̄ through
    matvec(·, x), walked by funcbp. ``solve``'s and ``transpose_solve``'s own operands get none
    (they only compute A^-1), and auxiliary outputs carry no derivative, as in jax.

    b̄ is itself a ``custom_linear_solve``, with the transposed operator (vecmat, whose solver is
    ``transpose_solve``): its derivative then comes from vecmat's operands, as the first one's
    comes from matvec's. Evaluating ``transpose_solve`` directly would give the same b̄ but lose
    that derivative wherever the solver's operands are held constant (``jnp.linalg.solve``
    factorises ``stop_gradient(A)``), so second derivatives would be wrong.
    """
    interp = _interp()
    n_consts = sum(const_lengths)
    n_b = len(args) - n_consts
    x_cts = cts[:n_b]
    if all(ct is None for ct in x_cts):
        return (None,) * len(args)
    if jaxprs.transpose_solve is None:
        raise TypeError(
            "custom_linear_solve: reverse-mode differentiation needs transpose_solve; pass "
            "transpose_solve=..., or symmetric=True if the linear map is symmetric")
    groups, start = [], 0
    for length in const_lengths:
        groups.append(list(args[start:start + length]))
        start += length
    groups = type(const_lengths)(*groups)
    b_avals = jaxprs.matvec.in_avals[len(groups.matvec):]
    x_cts = [interp.zeros_like_aval(aval) if ct is None else ct
             for ct, aval in zip(x_cts, b_avals, strict=True)]
    flipped = groups.transpose()
    b_bar = linear_solve_p.bind(*(a for group in flipped for a in group), *x_cts,
                                const_lengths=const_lengths.transpose(),
                                jaxprs=jaxprs.transpose())[:n_b]  # [n_b:]: aux outputs
    mv_needs = list(needs[:len(groups.matvec)])
    mv_bar = [None] * len(mv_needs)
    if any(mv_needs):
        mv = jaxprs.matvec
        _, record = interp.forward(mv.jaxpr, list(mv.consts), groups.matvec + list(out[:n_b]),
                                   mv_needs + [False] * n_b)
        mv_bar = interp.backward(record, [-bb for bb in b_bar])[:len(mv_needs)]
    return (*mv_bar, *([None] * (n_consts - len(mv_needs))), *b_bar)


# Factorisations jax cannot differentiate either: say so, and what to use instead.
for _name, _instead in [
        ("geqrf", "jnp.linalg.qr"), ("geqp3", "jax.scipy.linalg.qr(..., pivoting=True)"),
        ("householder_product", "jnp.linalg.qr"), ("ormqr", "jnp.linalg.qr and a matmul"),
        ("tridiagonal", "jnp.linalg.eigh of the matrix"),
        ("cholesky_update", "jnp.linalg.cholesky of the updated matrix"),
        ("symmetric_product", "a @ a.T with jnp")]:
    NO_RULE_HINTS[_name] = (
        f"jax has no derivative for '{_name}' either; use {_instead} (differentiable), "
        "or wrap the computation in jax.custom_vjp with your own backward")
