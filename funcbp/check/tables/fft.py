"""``funcbp check`` records for the ``fft`` rule: every fft_type, odd and even lengths, n-d.

Complex inputs are built inside the sample from a real pair ``(x, y)`` as ``x + iy``, so the
comparison stays on real arrays while the complex cotangents of the complex outputs exercise
jax's convention; rfft/irfft on odd and even lengths exercise the weighting of the Hermitian
half spectrum.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from funcbp.check.rules import N, Sample

F = jnp.fft


def _pair(label, fn, *shape):
    return Sample("fft", label, lambda x, y: fn(lax.complex(x, y)), (N(*shape), N(*shape)))


def samples() -> list[Sample]:
    """fft, ifft, rfft and irfft in one and several dimensions."""
    return [
        _pair("fft", F.fft, 3, 8),
        _pair("ifft", F.ifft, 3, 5),
        _pair("fft2 and ifftn over axes", lambda z: F.fft2(z) + F.ifftn(z, axes=(0, 2)), 2, 3, 4),
        Sample("fft", "rfft odd length", F.rfft, (N(3, 7),)),
        Sample("fft", "rfft even length", F.rfft, (N(3, 6),)),
        Sample("fft", "rfftn", F.rfftn, (N(2, 3, 5),)),
        _pair("irfft odd length", lambda z: F.irfft(z, n=7), 3, 4),
        _pair("irfft even length", lambda z: F.irfft(z, n=6), 3, 4),
        _pair("irfftn", lambda z: F.irfftn(z, s=(4, 5)), 2, 4, 3),
        _pair("hfft", lambda z: F.hfft(z, n=5), 3, 3),
        Sample("fft", "ihfft", F.ihfft, (N(3, 6),)),
    ]
