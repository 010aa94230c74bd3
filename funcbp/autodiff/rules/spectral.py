"""VJP rules for the spectral decompositions: ``eigh``, ``eig`` and ``svd``.

They carry ``jnp.linalg.eigh/eigvalsh/eigvals/svd/pinv/lstsq/norm(A, 2)``. Each rule is the
transpose of the first-order perturbation result (Giles 2008, sec. 3.1; Townsend 2016 for the
SVD), computed from the forward outputs with the F-matrix F_ij = 1/(λ_j - λ_i) (zero on the
diagonal). As in jax, F is built as 1/(I + λ_j - λ_i) - I, so that equal eigenvalues (or
singular values) give infinite off-diagonal entries: the eigenvector part of the gradient is then
not finite, exactly where jax's is not, while the eigenvalues' own gradient (which does not
involve F) stays finite. A zero cotangent never meets F, so e.g. ``eigvalsh`` of a matrix with a
repeated eigenvalue has the finite gradient jax gives.

Refused as jax refuses them (``UnsupportedPrimitiveError``, a ``NotImplementedError``, naming
the parameter): ``eigh``/``svd`` with a partial ``subset_by_index``, ``svd`` of a non-square
matrix with ``full_matrices=True`` and ``compute_uv=True``, and ``eig`` computing eigenvectors
without ``enable_eigvec_derivs=True`` (their gauge is fixed only under assumptions jax cannot
check). Parameters that choose an implementation (``algorithm``, ``implementation``) or an order
(``sort_eigenvalues``) do not change the rules, which read the outputs as they come.

Complex inputs follow jax's convention (transposes of the real-linear JVP under Re(u v)),
including the phase conventions jax fixes: the real singular values' shared phase of U and V,
and LAPACK's normalisation of ``eig``'s eigenvectors.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from funcbp.autodiff.rules import NO_RULE_HINTS, vjp_rule
from funcbp.autodiff.rules.decompositions import diag, eye_like, mH, mm, mT, refuse, solve

__all__ = ["eig_vjp", "eigh_vjp", "svd_vjp"]

linalg = lax.linalg


def _f_matrix(lam):
    """F_ij = 1/(λ_j - λ_i) off the diagonal, 0 on it (infinite where λ_i = λ_j, as in jax)."""
    eye = eye_like(lam, lam.shape[-1])
    return 1 / (eye + lam[..., None, :] - lam[..., :, None]) - eye


# --- eigh ---------------------------------------------------------------------------------------

def eigh_forward(x, *, needs, **params):
    """Decomposes (x + x^H) / 2 when x is differentiated, as jax's derivative does.

    For the Hermitian input eigh requires this is x itself. For an input that is not (e.g. one
    triangle, with ``symmetrize_input=False``, which LAPACK reads as a Hermitian matrix), jax
    differentiates the decomposition of the symmetrised matrix and returns its values; funcbp
    returns the same values and gradient.
    """
    sym = (x + jnp.conj(mT(x))) / 2
    return list(linalg.eigh_p.bind(sym, **params)), None


@vjp_rule(linalg.eigh_p, forward=eigh_forward, handles_complex=True)
def eigh_vjp(cts, x, *, out, lower, sort_eigenvalues, subset_by_index, **params):
    """A = V diag(w) V^H: Ā = conj(V) (diag(w̄) + F ∘ (V^T V̄)) V^T, F_ij = 1/(w_j - w_i).

    The input must be Hermitian (``jnp.linalg.eigh`` symmetrises it); ``lower`` says which
    triangle LAPACK reads, which for such an input changes no value, so, as jax, the rule
    differentiates the decomposition of the whole matrix.
    """
    n = x.shape[-1]
    if subset_by_index is not None and tuple(subset_by_index) != (0, n):
        raise refuse("eigh", f"subset_by_index={subset_by_index}",
                     "a partial eigendecomposition has no derivative here (jax refuses it too);"
                     " compute all eigenpairs and slice them")
    v, w = out
    v_bar, w_bar = cts
    inner = jnp.zeros(v.shape, v.dtype)
    if w_bar is not None:
        inner = inner + diag(w_bar.astype(v.dtype))
    if v_bar is not None:
        inner = inner + _f_matrix(w.astype(v.dtype)) * mm(mT(v), v_bar)
    return (mm(mm(jnp.conj(v), inner), mT(v)),)


# --- eig ----------------------------------------------------------------------------------------

def eig_forward(x, *, needs, compute_left_eigenvectors, compute_right_eigenvectors, **params):
    """Computes the right eigenvectors too (the eigenvalues' gradient needs them).

    ``enable_eigvec_derivs`` arrived in jax 0.10; a jax 0.9 jaxpr lacks it, which means False
    (jax 0.9 never differentiates eigenvectors). It stays in ``params`` for the bind.
    """
    wants_vectors = compute_left_eigenvectors or compute_right_eigenvectors
    if wants_vectors and not params.get("enable_eigvec_derivs", False):
        raise refuse(
            "eig", "eigenvectors and enable_eigvec_derivs=False",
            "derivatives of a non-symmetric matrix's eigenvectors (which second derivatives of its"
            " eigenvalues need too) are only valid under assumptions on the input that cannot be "
            "checked (distinct eigenvalues, see jax.lax.linalg.eig); pass "
            "enable_eigvec_derivs=True to jax.lax.linalg.eig (jax >= 0.10) to opt in, as with jax")
    outs = list(linalg.eig_p.bind(
        x, compute_left_eigenvectors=compute_left_eigenvectors, compute_right_eigenvectors=True,
        **params))
    if compute_right_eigenvectors:
        return outs, None
    return outs[:-1], outs[-1]


def _eigvec_p_bar(w, v, w_bar, v_bar):
    """P̄ for P = V^-1 dA V, from dw = diag(P) and dv = V (F ∘ P) + v_j c_j under LAPACK's
    normalisation (unit norm, real largest component k_j): c_j = -Re(v_j^H u_j)
    - i Im(u_{k_j j}) / Re(v_{k_j j}), u = V (F ∘ P). Transposes use Re<a, b> (jax's pairing)."""
    p_bar = jnp.zeros(v.shape, v.dtype)
    if w_bar is not None:
        p_bar = p_bar + diag(w_bar)
    if v_bar is not None:
        c_bar = jnp.sum(v * v_bar, axis=-2)  # dv = u + v c
        k = jnp.argmax(jnp.abs(v), axis=-2)
        mask = (jnp.arange(v.shape[-2])[:, None] == k[..., None, :]).astype(v.dtype)
        r = jnp.real(jnp.sum(mask * v, axis=-2))
        # c = -Re(alpha) + i (-Im(beta) / r), alpha = sum conj(v) u, beta = sum mask u
        alpha_bar = -jnp.real(c_bar).astype(v.dtype)
        beta_bar = -1j * (jnp.imag(c_bar) / r).astype(v.dtype)
        u_bar = v_bar + jnp.conj(v) * alpha_bar[..., None, :] + mask * beta_bar[..., None, :]
        p_bar = p_bar + _f_matrix(w) * mm(mT(v), u_bar)
    return p_bar


def _undo_similarity(v, p_bar):
    """Transpose of dA -> V^-1 dA V: P̄ -> V^-T P̄ V^T (a solve, not an inverse)."""
    return solve(mT(v), mm(p_bar, mT(v)))


@vjp_rule(linalg.eig_p, forward=eig_forward, handles_complex=True)
def eig_vjp(cts, x, *, out, res=None, compute_left_eigenvectors, compute_right_eigenvectors,
            **params):
    """A V = V diag(w): Ā = V^-T (diag(w̄) + F ∘ (V^T Ū)) V^T, Ū = V̄ plus the part of V̄ that
    LAPACK's gauge condition sends back; left eigenvectors are right ones of A^H. For a real
    input the real part is kept."""
    w = out[0]
    vr = out[-1] if compute_right_eigenvectors else res
    w_bar = cts[0]
    vl_bar = cts[1] if compute_left_eigenvectors else None
    vr_bar = cts[-1] if compute_right_eigenvectors else None
    a_bar = None
    if w_bar is not None or vr_bar is not None:
        a_bar = _undo_similarity(vr, _eigvec_p_bar(w, vr, w_bar, vr_bar))
    if vl_bar is not None:
        # vl diagonalises A^H with eigenvalues conj(w); dA^H transposes back to conj(·)^T
        part = mT(jnp.conj(_undo_similarity(out[1], _eigvec_p_bar(jnp.conj(w), out[1], None,
                                                                   vl_bar))))
        a_bar = part if a_bar is None else a_bar + part
    if a_bar is None:
        return (None,)
    return (a_bar if jnp.iscomplexobj(x) else jnp.real(a_bar).astype(x.dtype),)


# --- svd ----------------------------------------------------------------------------------------

def svd_forward(x, *, needs, full_matrices, compute_uv, subset_by_index, **params):
    """Computes U and V^T too when only singular values are asked for (the rule needs them)."""
    m, n = x.shape[-2:]
    if subset_by_index is not None and tuple(subset_by_index) != (0, min(m, n)):
        raise refuse("svd", f"subset_by_index={subset_by_index}",
                     "a partial SVD has no derivative here; compute the full SVD and slice it")
    if compute_uv and full_matrices and m != n:
        raise refuse("svd", "full_matrices=True on a non-square matrix",
                     "the extra singular vectors are not unique, so they have no derivative "
                     "(jax refuses this too); pass full_matrices=False")
    if compute_uv:
        outs = linalg.svd_p.bind(x, full_matrices=full_matrices, compute_uv=True,
                                 subset_by_index=subset_by_index, **params)
        return list(outs), None
    s, u, vt = linalg.svd_p.bind(x, full_matrices=False, compute_uv=True,
                                 subset_by_index=subset_by_index, **params)
    return [s], (u, vt)


@vjp_rule(linalg.svd_p, forward=svd_forward, handles_complex=True)
def svd_vjp(cts, x, *, out, res=None, compute_uv, **params):
    """A = U S V^H: Ā = conj(U) (diag(s̄) + (J + J^H) S + S (K + K^H) + D) V^T with
    J = F ∘ (U^T Ū), K = F ∘ (V^T V̄), F_ij = 1/(s_j^2 - s_i^2), D = i Im diag(U^T Ū) / s (zero
    for real A); a tall A adds (I - conj(U) U^T) Ū S^-1 V^T, a wide one the conjugate transpose
    of (I - conj(V) V^T) V̄ S^-1 U^T."""
    s = out[0]
    u, vt = (out[1], out[2]) if compute_uv else res
    if _min_dim_zero(x):
        return (jnp.zeros_like(x),)
    s_bar = cts[0]
    u_bar, vt_bar = (cts[1], cts[2]) if compute_uv else (None, None)
    v = mH(vt)
    v_bar = None if vt_bar is None else mH(vt_bar)
    inner = jnp.zeros(s.shape + s.shape[-1:], x.dtype)
    if s_bar is not None:
        inner = inner + diag(s_bar).astype(x.dtype)
    if u_bar is not None or v_bar is not None:
        # (s_j + s_i)(s_j - s_i) is more accurate than s_j^2 - s_i^2
        eye = eye_like(s, s.shape[-1])
        f = 1 / ((s[..., None, :] + s[..., :, None]) * (s[..., None, :] - s[..., :, None]) + eye)
        f = f - eye
    if u_bar is not None:
        ut_ub = mm(mT(u), u_bar)
        j = f * ut_ub
        inner = inner + (j + mH(j)) * s[..., None, :]
        if jnp.iscomplexobj(x):
            # the phase U and V share, fixed by a real s: 1/s where s > 0, 0 where s = 0
            s_zero = (s == 0).astype(s.dtype)
            s_inv = 1 / (s + s_zero) - s_zero
            inner = inner + diag(1j * jnp.imag(jnp.diagonal(ut_ub, axis1=-2, axis2=-1)) * s_inv)
    if v_bar is not None:
        k = f * mm(mT(v), v_bar)
        inner = inner + s[..., :, None] * (k + mH(k))
    a_bar = mm(mm(jnp.conj(u), inner), mT(v))
    m, n = x.shape[-2:]
    if u_bar is not None and m > n:
        w = u_bar / s[..., None, :]
        a_bar = a_bar + mm(w - mm(jnp.conj(u), mm(mT(u), w)), mT(v))
    if v_bar is not None and n > m:
        w = v_bar / s[..., None, :]
        a_bar = a_bar + mH(mm(w - mm(jnp.conj(v), mm(mT(v), w)), mT(u)))
    return (a_bar,)


def _min_dim_zero(x):
    return min(x.shape[-2:]) == 0


for _name, _instead in [("schur", "jnp.linalg.eig or eigh"),
                        ("hessenberg", "jnp.linalg.eig or qr")]:
    NO_RULE_HINTS[_name] = (
        f"jax has no derivative for '{_name}' either; use {_instead} (differentiable), "
        "or wrap the computation in jax.custom_vjp with your own backward")
