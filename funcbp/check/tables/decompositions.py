"""``funcbp check`` records for the linear-algebra rules (``rules/decompositions.py``,
``rules/spectral.py``).

Besides random well-conditioned inputs (and leading batch dimensions), the edge cases on purpose:

- singular matrices (``lu``, ``inv``/``solve`` through ``custom_linear_solve``, a zero on a
  triangular diagonal, a non-positive-definite ``cholesky``, a singular tridiagonal system),
  where jax's gradient is inf/nan: funcbp must give the same non-finite values, place by place;
- repeated eigenvalues and singular values: ``eigvalsh``/``svdvals``/``norm(A, 2)`` have the
  finite gradient jax defines (no eigenvector term), while a cotangent on the eigenvectors of a
  degenerate eigenspace gives jax's non-finite values;
- rank-deficient matrices (a zero singular value: ``pinv`` and ``lstsq`` stay finite);
- zero-size (0 x 0, 0 x n) matrices;
- parameter combinations jax refuses (``eig`` eigenvectors without ``enable_eigvec_derivs``,
  ``svd`` with ``full_matrices=True`` on a non-square matrix): funcbp must refuse them too;
- ``qr`` with column pivoting of a wide matrix, checked against finite differences: jax 0.10's
  own rule reads the unpermuted trailing columns there and is off.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jax import lax

from funcbp.check.rules import N, P, Sample

# linear-algebra gradients amplify rounding by the condition number
TOL = 10.0
F64 = ("float64",)


def _const(value):
    """A fixed matrix, in the dtype the check runs in."""
    return lambda key, dtype: jnp.asarray(value, dtype)


def _rotation(key, n, batch, dtype):
    return jnp.linalg.qr(jax.random.normal(key, (*batch, n, n), dtype))[0]


def GEN(n, *batch):
    """Well conditioned, rows reversed so that LU pivots."""
    def draw(key, dtype):
        a = 0.4 * jax.random.normal(key, (*batch, n, n), dtype) + 2 * jnp.eye(n, dtype=dtype)
        return a[..., ::-1, :]
    return draw


def TRI(n, *batch):
    return lambda key, dtype: (0.5 * jax.random.normal(key, (*batch, n, n), dtype)
                               + 2 * jnp.eye(n, dtype=dtype))


def TALL(m, n, *batch):
    return lambda key, dtype: (0.5 * jax.random.normal(key, (*batch, m, n), dtype)
                               + 2 * jnp.eye(m, n, dtype=dtype))


def SPECTRUM(values, *batch):
    """Q diag(values) Q^T with a random rotation Q: symmetric with the given eigenvalues."""
    def draw(key, dtype):
        q = _rotation(key, len(values), batch, dtype)
        w = jnp.asarray(values, dtype)
        return (q * w) @ jnp.swapaxes(q, -1, -2)
    return draw


def SINGULAR(m, n, values, *batch):
    """U diag(values) V^T: a matrix with the given singular values."""
    def draw(key, dtype):
        ku, kv = jax.random.split(key)
        k = len(values)
        u = _rotation(ku, m, batch, dtype)[..., :, :k]
        v = _rotation(kv, n, batch, dtype)[..., :, :k]
        return (u * jnp.asarray(values, dtype)) @ jnp.swapaxes(v, -1, -2)
    return draw


def NONSYM(key, dtype):
    """Eigenvalues 1 +- 2i and 4."""
    v = jnp.eye(3, dtype=dtype) + 0.3 * jax.random.normal(key, (3, 3), dtype)
    b = jnp.array([[1.0, -2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 4.0]], dtype)
    return jnp.linalg.solve(v.T, (v @ b).T).T


# rank 2: LU meets an exactly zero pivot, in float32 as in float64
_SINGULAR3 = [[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 1.0]]
# singular values 2, 1, 0 exactly
_RANK2 = [[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]
EMPTY = _const(jnp.zeros((0, 0)))


def _phase(z):
    """A real function of a complex value that depends on its phase too."""
    return jnp.abs(z + (0.3 + 0.7j))


def _eig_vectors(a):
    w, vl, vr = lax.linalg.eig(a, enable_eigvec_derivs=True)
    return _phase(w), _phase(vl), _phase(vr)


def _solve_user(a, b):
    return lax.custom_linear_solve(lambda x: a @ x, b,
                                   solve=lambda mv, r: jnp.linalg.solve(a, r),
                                   transpose_solve=lambda vm, r: jnp.linalg.solve(a.T, r))


def _lu(a):
    return lax.linalg.lu(a)[0]


def _tri(**kw):
    return lambda a, b: lax.linalg.triangular_solve(a, b, **kw)


def _degenerate_projector(a):
    # the projector onto the two lowest eigenvectors: gauge-invariant, yet jax's gradient at an
    # exactly repeated eigenvalue is not finite (F = 1/0 meets V^T V̄), and funcbp's must match
    w, v = jnp.linalg.eigh(a)
    return v[..., :2] @ jnp.swapaxes(v[..., :2], -1, -2)


def _z(x, y):
    return lax.complex(x, y)


def _complex(fn, shapes, shift=None):
    """A record's function and draws for ``fn`` of complex matrices ``x + iy`` (real pairs in,
    as in ``tables/complex.py``), each plus ``shift`` (e.g. a diagonal that keeps it regular)."""
    def f(*xy):
        zs = [_z(x, y) if shift is None else _z(x, y) + shift for x, y in zip(xy[::2], xy[1::2],
                                                                           strict=True)]
        return fn(*zs)
    return f, tuple(N(*s) for s in shapes for _ in range(2))


def _complex_sample(prim, label, fn, shapes, shift=None):
    f, draws = _complex(fn, shapes, shift)
    return Sample(prim, label, f, draws, tol=TOL)


def _hermitian(z):
    return z @ jnp.conj(z.T) + 3 * jnp.eye(z.shape[-1])


def samples() -> list[Sample]:
    """Random and edge-case records for the linear-algebra rules."""
    svd = jnp.linalg.svd
    return [
        # --- lu
        Sample("lu", "random, pivoting", _lu, (GEN(3),), tol=TOL),
        Sample("lu", "wide, batched", _lu, (TALL(3, 4, 2),), tol=TOL),
        Sample("lu", "tall", _lu, (TALL(4, 3),), tol=TOL),
        Sample("lu", "singular (inf/nan as jax)", _lu, (_const(_SINGULAR3),)),
        Sample("lu", "empty 0x0", _lu, (EMPTY,)),
        Sample("lu", "lu_factor + lu_solve", lambda a, b: jsl.lu_solve(jsl.lu_factor(a), b),
               (GEN(3), N(3, 2)), tol=TOL),
        # --- triangular_solve
        Sample("triangular_solve", "left, lower", _tri(left_side=True, lower=True),
               (TRI(3), N(3, 2)), tol=TOL),
        Sample("triangular_solve", "right, upper, transposed, batched",
               _tri(left_side=False, lower=False, transpose_a=True),
               (TRI(3, 2), N(2, 4, 3)), tol=TOL),
        Sample("triangular_solve", "unit diagonal, transposed",
               _tri(left_side=True, lower=True, transpose_a=True, unit_diagonal=True),
               (N(3, 3), N(3, 2)), tol=TOL),
        Sample("triangular_solve", "zero on the diagonal (inf/nan as jax)",
               _tri(left_side=True, lower=True), (_const([[1.0, 0, 0], [2, 0, 0], [1, 1, 3]]),
                                                 N(3, 2))),
        Sample("triangular_solve", "empty 0x0", _tri(left_side=True, lower=True),
               (EMPTY, N(0, 2))),
        # --- cholesky
        Sample("cholesky", "random, batched", jnp.linalg.cholesky,
               (SPECTRUM([1.0, 2.0, 4.0], 2),), tol=TOL),
        Sample("cholesky", "lower triangle only",
               lambda a: lax.linalg.cholesky(a, symmetrize_input=False),
               (SPECTRUM([1.0, 2.0, 4.0]),), tol=TOL),
        Sample("cholesky", "cho_solve", lambda a, b: jsl.cho_solve(jsl.cho_factor(a), b),
               (SPECTRUM([1.0, 2.0, 4.0]), N(3)), tol=TOL),
        Sample("cholesky", "not positive definite (nan as jax)", jnp.linalg.cholesky,
               (_const(_SINGULAR3),)),
        Sample("cholesky", "empty 0x0", jnp.linalg.cholesky, (EMPTY,)),
        # --- qr
        Sample("qr", "tall, reduced", jnp.linalg.qr, (TALL(4, 3),), tol=TOL),
        Sample("qr", "wide, batched", jnp.linalg.qr, (TALL(3, 4, 2),), tol=TOL),
        Sample("qr", "complete (full Q of a tall matrix)",
               lambda a: jnp.linalg.qr(a, mode="complete"), (TALL(4, 3),), tol=TOL),
        Sample("qr", "column pivoting", lambda a: jsl.qr(a, pivoting=True, mode="economic")[:2],
               (TALL(4, 3),), tol=TOL),
        Sample("qr", "wide with column pivoting, vs finite differences (jax is off here)",
               lambda a: jsl.qr(a, pivoting=True, mode="economic")[:2], (TALL(3, 5),), F64,
               reference="fd"),
        Sample("qr", "empty 3x0 and 0x3", lambda a, b: (jnp.linalg.qr(a), jnp.linalg.qr(b)),
               (N(3, 0), N(0, 3))),
        # --- svd
        Sample("svd", "square, full", svd, (SINGULAR(3, 3, [1.0, 2.0, 3.0]),), tol=TOL),
        Sample("svd", "thin, tall, batched", lambda a: svd(a, full_matrices=False),
               (SINGULAR(4, 3, [1.0, 2.0, 3.0], 2),), tol=TOL),
        Sample("svd", "thin, wide", lambda a: svd(a, full_matrices=False),
               (SINGULAR(3, 4, [1.0, 2.0, 3.0]),), tol=TOL),
        Sample("svd", "values only, matrix 2-norm", lambda a: jnp.linalg.norm(a, 2),
               (SINGULAR(4, 3, [1.0, 2.0, 3.0]),), tol=TOL),
        Sample("svd", "pinv and lstsq", lambda a, b: (jnp.linalg.pinv(a),
                                                      jnp.linalg.lstsq(a, b)[0]),
               (SINGULAR(4, 3, [1.0, 2.0, 3.0]), N(4)), tol=TOL),
        Sample("svd", "repeated singular values, values only (finite)",
               lambda a: svd(a, compute_uv=False), (_const(jnp.eye(3)),)),
        Sample("svd", "repeated singular values, vectors (inf/nan as jax)", svd,
               (_const(jnp.eye(3)),)),
        Sample("svd", "a zero singular value: pinv (finite)", jnp.linalg.pinv,
               (_const(_RANK2),)),
        Sample("svd", "a zero singular value: thin vectors (inf/nan as jax)",
               lambda a: svd(a, full_matrices=False), (_const(_RANK2),)),
        Sample("svd", "empty 0x0 and 0x3", lambda a, b: (svd(a), svd(b, full_matrices=False)),
               (EMPTY, N(0, 3))),
        Sample("svd", "full_matrices on a non-square matrix (jax refuses)", svd, (N(4, 3),),
               reference="raises"),
        # --- eigh
        Sample("eigh", "random, batched", jnp.linalg.eigh,
               (SPECTRUM([-2.0, 0.5, 3.0], 2),), tol=TOL),
        Sample("eigh", "upper triangle, unsymmetrized",
               lambda a: lax.linalg.eigh(a, lower=False, symmetrize_input=False),
               (SPECTRUM([-2.0, 0.5, 3.0]),), tol=TOL),
        Sample("eigh", "double eigenvalue: eigvalsh (finite)", jnp.linalg.eigvalsh,
               (_const(jnp.diag(jnp.array([1.0, 1.0, 3.0]))),)),
        Sample("eigh", "double eigenvalue, rotated: eigvalsh", jnp.linalg.eigvalsh,
               (SPECTRUM([1.0, 1.0, 3.0]),), tol=TOL),
        Sample("eigh", "double eigenvalue: eigenvectors (inf/nan as jax)", jnp.linalg.eigh,
               (_const(jnp.diag(jnp.array([1.0, 1.0, 3.0]))),)),
        Sample("eigh", "double eigenvalue: projector on its eigenspace (inf/nan as jax)",
               _degenerate_projector, (_const(jnp.diag(jnp.array([1.0, 1.0, 3.0]))),)),
        Sample("eigh", "empty 0x0", jnp.linalg.eigh, (EMPTY,)),
        # --- eig
        Sample("eig", "eigenvalues", lambda a: _phase(jnp.linalg.eigvals(a)), (NONSYM,), tol=TOL),
        Sample("eig", "eigenvectors, enable_eigvec_derivs=True", _eig_vectors, (NONSYM,),
               tol=TOL),
        Sample("eig", "eigenvectors without enable_eigvec_derivs (jax refuses)",
               lambda a: _phase(jnp.linalg.eig(a)[1]), (NONSYM,), reference="raises"),
        Sample("eig", "empty 0x0", lambda a: _phase(jnp.linalg.eigvals(a)), (EMPTY,)),
        # --- tridiagonal_solve
        Sample("tridiagonal_solve", "random, batched", lax.linalg.tridiagonal_solve,
               (N(2, 4), lambda k, d: jax.random.normal(k, (2, 4), d) + 4, N(2, 4), N(2, 4, 3)),
               tol=TOL),
        Sample("tridiagonal_solve", "size 1", lax.linalg.tridiagonal_solve,
               (N(1), P(1), N(1), N(1, 2))),
        Sample("tridiagonal_solve", "singular (nan as jax)", lax.linalg.tridiagonal_solve,
               (_const([0.0, 1.0, 1.0]), _const([1.0, 1.0, 1.0]), _const([1.0, 1.0, 0.0]),
                N(3, 2))),
        Sample("tridiagonal_solve", "empty", lax.linalg.tridiagonal_solve,
               (N(0), N(0), N(0), N(0, 2))),
        # --- custom_linear_solve (jnp.linalg.solve / inv, and users' own solvers)
        Sample("custom_linear_solve", "solve, batched", jnp.linalg.solve, (GEN(3, 2), N(2, 3, 2)),
               tol=TOL),
        Sample("custom_linear_solve", "inv, det, slogdet",
               lambda a: (jnp.linalg.inv(a), jnp.linalg.det(a), jnp.linalg.slogdet(a)[1]),
               (GEN(4),), tol=TOL),
        Sample("custom_linear_solve", "expm", jsl.expm, (N(3, 3, scale=0.5),), tol=TOL),
        Sample("custom_linear_solve", "user's solve and transpose_solve", _solve_user,
               (GEN(3), N(3)), tol=TOL),
        Sample("custom_linear_solve", "inv of a singular matrix (inf/nan as jax)",
               jnp.linalg.inv, (_const(_SINGULAR3),)),
        Sample("custom_linear_solve", "empty 0x0", jnp.linalg.solve, (EMPTY, N(0))),
        # --- complex matrices (jax's convention: the transpose of the real-linear JVP)
        _complex_sample("lu", "complex, wide", lambda z: lax.linalg.lu(z)[0], [(3, 4)]),
        _complex_sample("triangular_solve", "complex, conjugate_a",
                        lambda a, b: lax.linalg.triangular_solve(
                            a + 3 * jnp.eye(3), b, left_side=True, lower=True, transpose_a=True,
                            conjugate_a=True), [(3, 3), (3, 2)]),
        _complex_sample("cholesky", "complex Hermitian",
                        lambda z: jnp.linalg.cholesky(_hermitian(z)), [(3, 3)]),
        _complex_sample("qr", "complex, tall, complete",
                        lambda z: jnp.linalg.qr(z, mode="complete"), [(4, 3)]),
        _complex_sample("qr", "complex, wide", jnp.linalg.qr, [(3, 4)]),
        _complex_sample("svd", "complex, thin", lambda z: jnp.linalg.svd(z, full_matrices=False),
                        [(4, 3)], shift=jnp.eye(4, 3) * jnp.array([1.0, 3.0, 5.0])),
        _complex_sample("eigh", "complex Hermitian",
                        lambda z: jnp.linalg.eigh(z + jnp.conj(z.T)), [(3, 3)],
                        shift=jnp.diag(jnp.array([0.0, 3.0, 6.0]))),
        _complex_sample("eig", "complex, eigenvectors", _eig_vectors, [(3, 3)],
                        shift=jnp.diag(jnp.array([0.0, 3.0, 6.0]))),
        _complex_sample("tridiagonal_solve", "complex", lambda dl, d, du, b:
                        lax.linalg.tridiagonal_solve(dl, d + 4, du, b), [(4,), (4,), (4,), (4, 2)]),
        _complex_sample("custom_linear_solve", "complex solve",
                        lambda a, b: jnp.linalg.solve(a + 3 * jnp.eye(3), b), [(3, 3), (3,)]),
    ]
