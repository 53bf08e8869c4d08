"""Where DP-SGD draws its randomness: the Gaussian noise and the Poisson sample.

Two sources behind one interface (`RandomSource`):

- `SecureRandom`, for a node with its own data: a ChaCha20 keystream (OpenSSL through
  `cryptography`), keyed with 32 fresh bytes from `secrets` for each release. Nobody,
  the coordinator included, can predict or replay the noise, so nobody can subtract it
  from an update; and two releases never share it, so their difference cancels nothing.
  Torch's own generator is a Mersenne Twister: its output reveals its state.
- `SeededRandom`, for a simulated institution, whose rows and seeds all belong to the
  researcher: torch's generator from the run's seed, so a run can be repeated exactly.

Gaussian samples come from uniform doubles with 53 random bits, one 64-bit keystream word
each, through the inverse normal CDF: z = √2 · erfinv(2u − 1), vectorised in float64 and
rounded to the parameters' dtype (float32) after scaling.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

KEY_BYTES = 32  # ChaCha20's key: 256 bits from the operating system's CSPRNG
_HALF_RANGE = float(2**53)

if TYPE_CHECKING:  # imported where a tensor is made: a coordinator that only reads
    import torch  # a query's skeleton (privacy/analytics_release.py) loads none


class RandomSource(Protocol):
    """The randomness of one release of DP-SGD."""

    secure: bool

    def uniform(self, n: int) -> torch.Tensor:
        """`n` draws from U[0, 1), for Poisson sampling (compare with the sample rate)."""
        ...

    def normal_like(self, tensors: Sequence[torch.Tensor], std: float) -> list[torch.Tensor]:
        """Independent N(0, std²) noise shaped (and typed) like each of `tensors`."""
        ...


class SeededRandom:
    """Torch's generator from a seed: reproducible, for simulated institutions only."""

    secure = False

    def __init__(self, seed: int) -> None:
        import torch

        self.generator = torch.Generator().manual_seed(seed)

    def uniform(self, n: int) -> torch.Tensor:
        import torch

        return torch.rand(n, generator=self.generator)

    def normal_like(self, tensors: Sequence[torch.Tensor], std: float) -> list[torch.Tensor]:
        import torch

        return [
            torch.normal(0.0, std, t.shape, generator=self.generator, dtype=t.dtype)
            for t in tensors
        ]


class SecureRandom:
    """A ChaCha20 keystream keyed from `secrets`: unpredictable, never repeated.

    Each instance has its own fresh key, so the all-zero nonce is never reused with a
    key. `key` is for tests of the arithmetic only; a release never passes one.
    """

    secure = True

    def __init__(self, key: bytes | None = None) -> None:
        key = secrets.token_bytes(KEY_BYTES) if key is None else key
        self._stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor()

    def words(self, n: int) -> np.ndarray:
        """`n` uniform 64-bit words of keystream."""
        return np.frombuffer(self._stream.update(bytes(8 * n)), dtype="<u8")

    def _bits53(self, n: int) -> np.ndarray:
        # Each a whole number below 2⁵³, so exact in float64.
        return (self.words(n) >> np.uint64(11)).astype(np.float64)

    def uniform(self, n: int) -> torch.Tensor:
        """k / 2⁵³ for a uniform 53-bit k: every double of that grid in [0, 1) equally likely."""
        import torch

        return torch.from_numpy(self._bits53(n) / _HALF_RANGE)

    def _erfinv_of_symmetric_uniform(self, n: int) -> torch.Tensor:
        # u = k / 2⁵² + (2⁻⁵³ − 1) = (2k + 1 − 2⁵³) / 2⁵³ is uniform on the odd multiples
        # of 2⁻⁵³ in (−1, 1): each step exact in float64 (the results are all doubles),
        # symmetric about 0, and never ±1, so every z = √2 erfinv(u) is finite (|z| ≤ 8.3).
        u = self._bits53(n)
        u *= 2.0**-52
        u += 2.0**-53 - 1.0
        import torch

        return torch.from_numpy(u).erfinv_()

    def standard_normal(self, n: int) -> torch.Tensor:
        """`n` N(0, 1) draws in float64, by the inverse normal CDF."""
        return self._erfinv_of_symmetric_uniform(n).mul_(math.sqrt(2.0))

    def normal_like(self, tensors: Sequence[torch.Tensor], std: float) -> list[torch.Tensor]:
        sizes = [t.numel() for t in tensors]
        # One keystream call per step, scaled in float64, rounded once to the dtype.
        flat = self._erfinv_of_symmetric_uniform(sum(sizes)).mul_(math.sqrt(2.0) * std)
        dtypes = {t.dtype for t in tensors}
        parts = flat.to(dtypes.pop()).split(sizes) if len(dtypes) == 1 else flat.split(sizes)
        return [part.reshape(t.shape).to(t.dtype) for part, t in zip(parts, tensors, strict=True)]


def random_source(seed: int | None) -> RandomSource:
    """The CSPRNG when there is no seed (a node with its own data); else the seeded one."""
    return SecureRandom() if seed is None else SeededRandom(seed)
