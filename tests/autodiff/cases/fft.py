"""Cases for the ``fft`` rule: every fft_type, odd and even lengths, n-d, axes, norm, padding.

rfft/irfft on odd and even lengths exercise the weighting of the Hermitian half spectrum
(frequency 0 and the Nyquist frequency once, the others twice); float64 finite differences of
the first ``fft_*``, ``rfft_*`` and ``irfft_*`` case check the convention independently of jax.
"""

import jax
import jax.numpy as jnp

from tests.autodiff.cases import Case, args, normal
from tests.autodiff.cases.complex import cnormal

F = jnp.fft

CASES = [
    Case("fft_1d", F.fft, args(cnormal(3, 8))),
    Case("fft_ifft_2d", lambda z: F.fft2(z) + 3.0 * F.ifftn(z), args(cnormal(2, 3, 5))),
    Case("fft_axes_norm_and_padding",
         lambda z: (F.fftn(z, s=(4, 6), axes=(0, 2), norm="ortho"), F.ifft(z, n=3)),
         args(cnormal(3, 2, 5))),
    Case("fft_of_real_input", lambda x: F.fft(x) * F.ifft(x)[0], args(normal(3, 7))),
    Case("rfft_odd_and_even", lambda x, y: (F.rfft(x), F.rfft(y), F.rfft(y, n=4)),
         args(normal(3, 7), normal(3, 6))),
    Case("rfft_nd", lambda x: (F.rfftn(x), F.rfft2(x, s=(3, 4), norm="forward")),
         args(normal(2, 3, 5))),
    Case("irfft_odd_and_even", lambda z: (F.irfft(z, n=7), F.irfft(z, n=6), F.irfft(z)),
         args(cnormal(3, 4))),
    Case("irfft_nd", lambda z: (F.irfftn(z, s=(4, 6)), F.irfft2(z, s=(3, 5), axes=(0, 2))),
         args(cnormal(4, 2, 4))),
    Case("irfft_hfft_ihfft", lambda z, x: (F.hfft(z, n=5), F.hfft(z), F.ihfft(x), F.ihfft(x, n=4)),
         args(cnormal(3, 3), normal(3, 5))),
    Case("fft_second_order", jax.grad(lambda x: jnp.sum(jnp.abs(F.rfft(jnp.sin(x))) ** 2)
                                      + jnp.sum(F.irfft(F.rfft(x) * 1j, n=6) ** 3)),
         args(normal(6))),
]
