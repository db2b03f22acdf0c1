"""Bit-reproducible random draws and elementary functions: the same bits on every IEEE-754 CPU.

numpy dispatches its float transcendentals (exp, log, sin, arctan2, power, ...) to different SIMD
kernels per CPU (baseline SSE, AVX2, AVX-512, NEON) whose results differ in the last bits, float
reductions (sum, mean, std) add in a SIMD-dependent order, and ``Generator.normal``/``uniform`` go
through libm or C expressions a compiler may contract into FMAs. One flipped bit can change a pixel.
So everything here is built only from operations whose result IEEE 754 fixes exactly:

* **Random numbers** come from PCG64's raw 64-bit words seeded through ``SeedSequence``, both pure
  integer algorithms; uniforms, normals, bytes and permutations are derived from those words with
  integer shifts, masks and sums, and int -> float conversions of integers below 2**53 (exact).
* **float64 ``+ - * /`` and ``sqrt``** are correctly rounded on every CPU, scalar or SIMD. Each numpy
  ufunc call performs exactly one of them per element (and Python one per bytecode), so nothing can
  be fused into an FMA. ``rint``, ``frexp``, ``ldexp``, ``clip``, comparisons and ``where`` are exact.
* **exp, log, sin** are our own range reduction plus a fixed Horner polynomial made of those ops,
  never numpy's SIMD kernels or libm. Accuracy is ~1e-14; what matters is that it is the same
  everywhere. Arguments are clipped so no subnormal ever appears, which makes flush-to-zero modes
  (set by some libraries) irrelevant.
* **Blurs** are box / binomial filters on integers (direct sums or cumsum differences): integer
  sums are exact in any order. No float reduction is used anywhere; callers compute normalisers
  analytically instead (``kernel_energy``).
"""

from __future__ import annotations

import math

import numpy as np

_TWO_M32 = math.ldexp(1.0, -32)  # ldexp is exact; avoids float pow, which is libm
_TWO_M53 = math.ldexp(1.0, -53)
_LN2 = 0.6931471805599453  # literals are correctly rounded by Python's parser
_INV_LN2 = 1.4426950408889634
_TWO_PI = 6.283185307179586
_INV_TWO_PI = 0.15915494309189535
_SQRT_HALF = 0.7071067811865476
# Taylor / atanh-series coefficients as exactly rounded quotients of Python ints (CPython rounds
# int / int correctly), highest degree first for Horner.
_EXP_C = [1 / math.factorial(n) for n in range(11, -1, -1)]
_SIN_C = [(-1) ** j / math.factorial(2 * j + 1) for j in range(13, -1, -1)]
_LOG_C = [2 / (2 * k + 1) for k in range(8, -1, -1)]


def _horner(x: np.ndarray, coeffs: list[float]) -> np.ndarray:
    p = x * coeffs[0] + coeffs[1]
    for c in coeffs[2:]:
        p *= x  # separate ufunc calls: two roundings, never an FMA (in place: no new allocations)
        p += c
    return p


def exp(x: np.ndarray | float) -> np.ndarray:
    """e**x for |x| <= 80 (clipped): x = k ln2 + r, |r| <= ln2/2, Taylor to r**11, times 2**k."""
    x = np.clip(np.asarray(x, dtype=np.float64), -80.0, 80.0)
    k = np.rint(x * _INV_LN2)
    return np.ldexp(_horner(x - k * _LN2, _EXP_C), k.astype(np.int32))


def log(x: np.ndarray | float) -> np.ndarray:
    """Natural log for x > 0: x = m 2**e with m in [sqrt(1/2), sqrt(2)); log m = 2 atanh((m-1)/(m+1))."""
    m, e = np.frexp(np.asarray(x, dtype=np.float64))
    small = m < _SQRT_HALF
    m *= small + 1.0  # doubles m where small: exact, and much faster than np.where
    s = (m - 1.0) / (m + 1.0)
    return (e - small) * _LN2 + s * _horner(s * s, _LOG_C)


def sin(x: np.ndarray | float) -> np.ndarray:
    """sin x for moderate |x|: reduce to [-pi, pi] by whole turns, Taylor to r**27."""
    x = np.asarray(x, dtype=np.float64)
    r = x - np.rint(x * _INV_TWO_PI) * _TWO_PI
    return r * _horner(r * r, _SIN_C)


def cos(x: np.ndarray | float) -> np.ndarray:
    return sin(np.asarray(x, dtype=np.float64) + _TWO_PI / 4)


class Draws:
    """A random stream that uses only PCG64's integer output (see the module docstring)."""

    def __init__(self, *key: int) -> None:
        self._bits = np.random.PCG64(np.random.SeedSequence(list(key)))

    def words(self, n: int) -> np.ndarray:
        return self._bits.random_raw(n)

    def uniform(self, lo: float = 0.0, hi: float = 1.0, n: int | None = None) -> np.ndarray | float:
        """Uniform on [lo, hi): 53 random bits scaled exactly to [0, 1), then lo + (hi - lo) u."""
        u = (self.words(1 if n is None else n) >> np.uint64(11)).astype(np.float64) * _TWO_M53
        out = lo + (hi - lo) * u
        return float(out[0]) if n is None else out

    def normal(self, sd: float = 1.0, n: int | None = None) -> np.ndarray | float:
        """Irwin-Hall normal: sum of 12 uniforms minus 6 (mean 0, variance 1, bounded by +-6 sd).

        The 12 draws are 32-bit integers summed exactly in int64 and centred in integers, so the
        only float steps are an exact conversion and an exact scaling by a power of two.
        """
        k = (self.words(12 * (1 if n is None else n)) >> np.uint64(32)).astype(np.int64)
        total = k.reshape(-1, 12).sum(axis=1) * 2 + (12 - 12 * 2**32)  # 2 * (sum(k + 1/2) - 6 * 2**32)
        z = total.astype(np.float64) * (_TWO_M32 / 2) * sd
        return float(z[0]) if n is None else z

    def integer(self, lo: int, hi: int) -> int:
        """Uniform integer in [lo, hi) by multiply-shift of one 64-bit word (bias below 2**-50)."""
        return lo + ((int(self.words(1)[0]) * (hi - lo)) >> 64)

    def permutation(self, n: int) -> np.ndarray:
        """A uniformly random order of range(n): stable argsort of random integer keys."""
        return np.argsort(self.words(n), kind="stable")

    def noise(self, shape: tuple[int, ...]) -> np.ndarray:
        """int32 white noise, uniform on the odd integers -255..255 (mean 0, variance 65535/3)."""
        size = math.prod(shape)
        # The 8 bytes of each word in an explicitly little-endian order: the same bytes on any CPU.
        octets = self.words(-(-size // 8)).astype("<u8").view(np.uint8)[:size].astype(np.int32)
        octets *= 2
        octets -= 255
        return octets.reshape(shape)


NOISE_VARIANCE = 65535 / 3  # of Draws.noise: 4 * (256**2 - 1) / 12


def box(a: np.ndarray, width: int, axis: int) -> np.ndarray:
    """Sliding sums of ``width`` neighbours along ``axis`` (the 'valid' part), exact on integers.

    Cumulative sums keep ``a``'s dtype, so the caller must make sure the row sums fit it.
    """
    c = np.moveaxis(np.cumsum(a, axis=axis, dtype=a.dtype), axis, 0)
    out = c[width - 1 :].copy()
    out[1:] -= c[:-width]
    return np.moveaxis(out, 0, axis)


def box_small(a: np.ndarray, width: int, axis: int) -> np.ndarray:
    """Same sums as ``box`` by direct addition: faster for narrow windows, no cumulative-sum range."""
    a = np.moveaxis(a, axis, 0)
    n = a.shape[0] - width + 1
    out = a[:n].copy()
    for k in range(1, width):
        out += a[k : k + n]
    return np.moveaxis(out, 0, axis)


def binomial(a: np.ndarray, axis: int) -> np.ndarray:
    """[1, 2, 1] filter along ``axis`` (the 'valid' part), exact on integers."""
    a = np.moveaxis(a, axis, 0)
    out = a[:-2] + a[2:]
    out += a[1:-1]
    out += a[1:-1]
    return np.moveaxis(out, 0, axis)


def kernel_energy(widths: list[int], binomials: int) -> int:
    """Sum of squared taps of boxes of ``widths`` convolved with ``binomials`` [1, 2, 1] filters."""
    taps = np.ones(1, dtype=np.int64)
    for w in widths:
        taps = np.convolve(taps, np.ones(w, dtype=np.int64))
    for _ in range(binomials):
        taps = np.convolve(taps, np.array([1, 2, 1], dtype=np.int64))
    return int((taps * taps).sum())
