"""Cases for the linear-algebra rules (``rules/decompositions.py`` and ``rules/spectral.py``).

``linalg_*`` / ``scipy_*`` cases are the user-level functions (``jnp.linalg``,
``jax.scipy.linalg``); the others pin down one primitive's parameters (``lu`` of a wide matrix,
``qr`` with pivots, ``triangular_solve`` from the right, ...). Inputs are built to be well
conditioned (separated eigenvalues and singular values, dominant diagonals), since inputs are
random on every run and float32 comparisons must not depend on luck. Edge cases (singular
matrices, repeated eigenvalues, empty matrices) are in ``funcbp/check/tables/decompositions.py``.
"""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import lax

from tests.autodiff.cases import Case, args, normal
from tests.autodiff.cases.complex import cnormal


def _rotation(key, n, batch, dtype):
    return jnp.linalg.qr(jax.random.normal(key, (*batch, n, n), dtype))[0]


def general(n, *batch):
    """A well-conditioned matrix whose LU needs row exchanges (rows reversed)."""
    def draw(key, dtype):
        a = 0.4 * jax.random.normal(key, (*batch, n, n), dtype) + 2 * jnp.eye(n, dtype=dtype)
        return a[..., ::-1, :]
    return draw


def triangular(n, *batch):
    def draw(key, dtype):
        return 0.5 * jax.random.normal(key, (*batch, n, n), dtype) + 2 * jnp.eye(n, dtype=dtype)
    return draw


def spd(n, *batch):
    """Symmetric positive definite, eigenvalues in about [1, 4]."""
    def draw(key, dtype):
        q = _rotation(key, n, batch, dtype)
        w = jnp.linspace(1.0, 4.0, n, dtype=dtype)
        return (q * w[..., None, :]) @ jnp.swapaxes(q, -1, -2)
    return draw


def symmetric(n, *batch):
    """Symmetric with separated eigenvalues of both signs."""
    def draw(key, dtype):
        q = _rotation(key, n, batch, dtype)
        w = jnp.linspace(-2.0, 3.0, n, dtype=dtype)
        return (q * w[..., None, :]) @ jnp.swapaxes(q, -1, -2)
    return draw


def separated(m, n, *batch):
    """A matrix with singular values 1, 2, 3, ... (a rank-min(m, n) SVD that is well posed)."""
    def draw(key, dtype):
        ku, kv = jax.random.split(key)
        k = min(m, n)
        u = _rotation(ku, m, batch, dtype)[..., :, :k]
        v = _rotation(kv, n, batch, dtype)[..., :, :k]
        s = jnp.arange(1, k + 1, dtype=dtype)
        return (u * s[..., None, :]) @ jnp.swapaxes(v, -1, -2)
    return draw


def nonsymmetric(*batch):
    """3 x 3 with eigenvalues 1 +- 2i and 4: a complex pair and a real one, well separated."""
    def draw(key, dtype):
        v = jnp.eye(3, dtype=dtype) + 0.3 * jax.random.normal(key, (*batch, 3, 3), dtype)
        b = jnp.array([[1.0, -2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 4.0]], dtype)
        return jnp.linalg.solve(jnp.swapaxes(v, -1, -2), jnp.swapaxes(v @ b, -1, -2)).mT
    return draw


def tall(m, n, *batch):
    """Full column rank: a normal matrix plus 2 on the leading diagonal."""
    def draw(key, dtype):
        return (0.5 * jax.random.normal(key, (*batch, m, n), dtype)
                + 2 * jnp.eye(m, n, dtype=dtype))
    return draw


def diagonal(n, *batch, shift=4.0):
    def draw(key, dtype):
        return jax.random.normal(key, (*batch, n), dtype) + shift
    return draw


def cseparated(m, n):
    """A complex matrix with singular values 1, 2, 3, ... and random unitary factors."""
    def draw(key, dtype):
        ku, kv = jax.random.split(key)
        k = min(m, n)
        u = jnp.linalg.qr(cnormal(m, m)(ku, dtype))[0][:, :k]
        v = jnp.linalg.qr(cnormal(n, n)(kv, dtype))[0][:, :k]
        return (u * jnp.arange(1, k + 1, dtype=dtype)) @ jnp.conj(v.T)
    return draw


def chermitian(n):
    """Hermitian positive definite complex matrix."""
    def draw(key, dtype):
        a = cnormal(n, n)(key, dtype)
        return a @ jnp.conj(a.T) + n * jnp.eye(n, dtype=a.dtype)
    return draw


def _phase(z):
    """A real function of a complex output that depends on its phase (unlike |z|)."""
    return jnp.abs(z + (0.3 + 0.7j))


def _eig_all(a):
    w, vl, vr = lax.linalg.eig(a, enable_eigvec_derivs=True)
    return _phase(w), _phase(vl), _phase(vr)


def _solve_user(a, b):
    # custom_linear_solve with the user's own solvers; solve closes over `a` too, and jax
    # gives that closure no gradient (only matvec carries A's derivative)
    return lax.custom_linear_solve(lambda x: a @ x, b,
                                   solve=lambda mv, r: jnp.linalg.solve(a, r),
                                   transpose_solve=lambda vm, r: jnp.linalg.solve(a.T, r))


def _solve_symmetric_aux(a, b):
    def solve(mv, r):
        return jsl.cho_solve(jsl.cho_factor(lax.stop_gradient(a)), r), jnp.sum(r)
    x, aux = lax.custom_linear_solve(lambda x: a @ x, b, solve=solve, symmetric=True,
                                     has_aux=True)
    return x * aux


def _lu_rectangular(wide, tall_):
    return lax.linalg.lu(wide)[0], lax.linalg.lu(tall_)[0]


def _triangular_variants(a, b, c):
    # right side, upper triangle, transposed; and left side, unit diagonal, transposed
    right = lax.linalg.triangular_solve(a, b, left_side=False, lower=False, transpose_a=True)
    return right, jsl.solve_triangular(a[0], c, trans=1, unit_diagonal=True)


def _qr_variants(wide, tall_):
    # wide (m < n) batched; full Q of a tall matrix; column pivoting
    return (jnp.linalg.qr(wide), jnp.linalg.qr(tall_, mode="complete"),
            jsl.qr(tall_, pivoting=True, mode="economic")[:2])


def _svd_thin(tall_, wide):
    return (jnp.linalg.svd(tall_, full_matrices=False),
            jnp.linalg.svd(wide, full_matrices=False))


def _complex_factorisations(a, h, dl, d, du, b):
    return (jnp.linalg.solve(a, h[:, 0]), jnp.linalg.cholesky(h), jnp.linalg.eigh(h),
            lax.linalg.tridiagonal_solve(dl, d, du, b))


def _complex_qr_svd(tall_, wide, square):
    return (jnp.linalg.qr(tall_), jnp.linalg.qr(wide), jnp.linalg.qr(tall_, mode="complete"),
            jnp.linalg.svd(square), jnp.linalg.svd(tall_, full_matrices=False),
            jnp.linalg.svd(wide, full_matrices=False))


def _shifted(draw, shift):
    return lambda key, dtype: draw(key, dtype) + shift


CASES = [
    # --- user-level functions (jnp.linalg, jax.scipy.linalg) ---
    Case("linalg_solve", jnp.linalg.solve, args(general(3), normal(3, 2))),
    Case("linalg_inv", jnp.linalg.inv, args(general(3))),
    Case("linalg_det", jnp.linalg.det, args(general(4, 2))),
    Case("linalg_slogdet", lambda a: jnp.linalg.slogdet(a)[1], args(general(4))),
    Case("linalg_cholesky", jnp.linalg.cholesky, args(spd(3, 2))),
    Case("linalg_qr", jnp.linalg.qr, args(tall(4, 3))),
    Case("linalg_svd", jnp.linalg.svd, args(separated(3, 3))),
    Case("linalg_eigh", jnp.linalg.eigh, args(symmetric(3, 2))),
    Case("linalg_eigvalsh", jnp.linalg.eigvalsh, args(symmetric(4))),
    Case("linalg_eigvals", lambda a: _phase(jnp.linalg.eigvals(a)), args(nonsymmetric())),
    Case("linalg_lstsq", lambda a, b: jnp.linalg.lstsq(a, b)[0],
         args(separated(4, 3), normal(4))),
    Case("linalg_pinv", jnp.linalg.pinv, args(separated(4, 3))),
    Case("linalg_norm_2", lambda a: jnp.linalg.norm(a, 2), args(separated(4, 3))),
    Case("scipy_expm", jsl.expm, args(normal(3, 3, scale=0.5))),
    Case("scipy_solve_triangular", lambda a, b: jsl.solve_triangular(a, b, lower=True),
         args(triangular(3), normal(3, 2))),
    Case("scipy_cho_solve", lambda a, b: jsl.cho_solve(jsl.cho_factor(a), b),
         args(spd(3), normal(3))),
    Case("scipy_lu_solve", lambda a, b: jsl.lu_solve(jsl.lu_factor(a), b),
         args(general(3), normal(3, 2))),
    Case("tridiagonal_solve", lax.linalg.tridiagonal_solve,
         args(normal(2, 4), diagonal(4, 2), normal(2, 4), normal(2, 4, 3))),
    # --- the parameters of each primitive ---
    Case("lu_rectangular", _lu_rectangular, args(tall(3, 4, 2), tall(4, 3))),
    Case("triangular_solve_variants", _triangular_variants,
         args(triangular(3, 2), normal(2, 4, 3), normal(3))),
    Case("qr_wide_complete_pivoting", _qr_variants, args(tall(3, 4, 2), tall(4, 3)),
         reference_features=("qr_vjp_wide_complete",)),
    Case("svd_thin_batched", _svd_thin, args(separated(4, 3, 2), separated(3, 4))),
    # jax differentiates eigh as a function of the whole (symmetric) matrix, not of the one
    # triangle it reads, so finite differences in non-symmetric directions disagree: fd=False
    Case("eigh_upper_unsymmetrized",
         lambda a: lax.linalg.eigh(a, lower=False, symmetrize_input=False),
         args(symmetric(3)), fd=False),
    Case("eig_eigenvectors", _eig_all, args(nonsymmetric()),
         jax_features=("eig_eigvec_derivs",)),
    Case("custom_linear_solve_user_solvers", _solve_user, args(general(3), normal(3))),
    Case("custom_linear_solve_symmetric_aux", _solve_symmetric_aux, args(spd(3), normal(3))),
    # --- complex inputs (jax's convention; the rules registered with handles_complex=True) ---
    Case("complex_factorisations", _complex_factorisations, args(
        _shifted(cnormal(3, 3), 3 * jnp.eye(3)), chermitian(3), cnormal(4),
        _shifted(cnormal(4), 4.0), cnormal(4), cnormal(4, 2)), fd=False),
    Case("complex_qr_svd", _complex_qr_svd,
         args(cseparated(4, 3), cseparated(3, 4), cseparated(3, 3)), fd=False,
         reference_features=("qr_vjp_wide_complete",)),
    Case("complex_eig_eigenvectors", _eig_all,
         args(_shifted(cnormal(3, 3), jnp.diag(jnp.arange(3.0) * 3))), fd=False,
         jax_features=("eig_eigvec_derivs",)),
]
