"""VJP rule for ``fft``: every ``jnp.fft`` transform (fft, ifft, rfft, irfft, their n-d forms,
hfft, ihfft) reaches this one primitive, with ``fft_type`` and ``fft_lengths`` (the sizes of the
trailing axes it transforms).

Cotangents follow jax's complex convention (see docs/autodiff.md, "Complex numbers"): a
cotangent pairs with a tangent by ``Re(ct dy)``, no conjugation, so a linear map's rule is its
plain transpose. With ``F`` the DFT matrix (``F_jk = exp(-2 pi i jk / n)``, symmetric) over the
transformed axes and ``N`` the product of ``fft_lengths``:

- FFT, ``y = F x``: ``F^T = F``, so the cotangent is ``fft(ct)``.
- IFFT, ``y = conj(F) x / N``: symmetric too, so ``ifft(ct)``.
- RFFT, ``y = first n//2+1 entries (last axis) of F x`` for real ``x``: the transpose zero-pads
  ``ct`` back to ``n`` entries and applies ``F``; ``x`` is real, so only the real part returns:
  ``Re(fft(pad(ct)))``.
- IRFFT, real ``y`` built from the half spectrum ``x``: ``y = Re(M x)`` with
  ``M = conj(F) w / N``, where the weight ``w`` counts how often each stored frequency appears in
  the full Hermitian spectrum: 1 for frequency 0 and (even ``n``) for ``n/2``, whose imaginary
  parts the transform ignores, and 2 for every other one (it stands for itself and its mirror
  image). The transpose of ``Re(M .)`` sends the real ``ct`` to ``M^T ct``, which is
  ``w conj(rfft(ct)) / N``.
"""

from __future__ import annotations

import numpy as np
from jax import lax

from funcbp.autodiff.rules import vjp_rule

__all__ = ["fft_vjp"]

FftType = lax.FftType


def _fft_type(fft_type) -> FftType:
    if isinstance(fft_type, str):
        return FftType[fft_type.upper()]
    return FftType(int(fft_type))


def _fft(x, fft_type, fft_lengths):
    return lax.fft_p.bind(x, fft_type=fft_type, fft_lengths=tuple(fft_lengths))


def _half_spectrum_weights(n: int, dtype) -> np.ndarray:
    """How often each of the n//2+1 stored frequencies occurs in a length-n Hermitian spectrum."""
    w = np.full(n // 2 + 1, 2.0)
    w[0] = 1.0
    if n % 2 == 0:
        w[-1] = 1.0  # the Nyquist frequency is its own mirror image
    return w.astype(dtype)


@vjp_rule(lax.fft_p, handles_complex=True)
def fft_vjp(ct, x, *, fft_type, fft_lengths, **params):
    """d fft: fft(ct), ifft(ct), Re(fft(zero-padded ct)) for rfft, w conj(rfft(ct)) / N for
    irfft (derivation in the module docstring)."""
    kind = _fft_type(fft_type)
    lengths = tuple(fft_lengths)
    if kind in (FftType.FFT, FftType.IFFT):
        return (_fft(ct, kind, lengths),)
    if kind == FftType.RFFT:
        n, m = lengths[-1], ct.shape[-1]
        config = [(0, 0, 0)] * (ct.ndim - 1) + [(0, n - m, 0)]
        padded = lax.pad(ct, lax.full((), 0, ct.dtype), config)
        return (lax.real(_fft(padded, FftType.FFT, lengths)),)
    if kind == FftType.IRFFT:
        spectrum = _fft(ct, FftType.RFFT, lengths)
        w = _half_spectrum_weights(lengths[-1], ct.dtype) / float(np.prod(lengths))
        return (lax.conj(spectrum) * w,)
    raise NotImplementedError(f"funcbp: the fft rule does not know fft_type={fft_type!r}")
