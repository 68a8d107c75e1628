"""Tile-invariant pixel sampling: a bottom-k sample keyed by a hash of each pixel's position in the image.

Hence the pixels sampled from tiles are those sampled from the assembled image.
"""

from __future__ import annotations

import math

import numpy as np

_FMIX_C1 = np.uint64(0xFF51AFD7ED558CCD)


_FMIX_C2 = np.uint64(0xC4CEB9FE1A85EC53)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


_U33 = np.uint64(33)


_MAX_COORD = 1 << 32


def _fmix64(x: np.ndarray) -> np.ndarray:
    """MurmurHash3 64-bit finaliser, a bijection of uint64; modifies ``x`` in place and returns it."""
    x ^= x >> _U33
    x *= _FMIX_C1
    x ^= x >> _U33
    x *= _FMIX_C2
    x ^= x >> _U33
    return x


def _seed_mix(seed: int) -> np.uint64:
    return _fmix64(np.array([seed % (1 << 64)], dtype=np.uint64) ^ _GOLDEN)[0]


def _position_keys(origin: tuple[int, int], height: int, width: int, mix: np.uint64) -> np.ndarray:
    """``(height, width)`` uint64 sampling keys of the pixels of a tile whose top-left pixel is ``origin``."""
    rows = _fmix64((np.arange(height, dtype=np.uint64) + np.uint64(origin[0])) ^ mix)
    cols = _fmix64(((np.arange(width, dtype=np.uint64) + np.uint64(origin[1])) | np.uint64(1 << 40)) ^ mix)
    keys = rows[:, np.newaxis] ^ cols[np.newaxis, :]
    keys *= _GOLDEN
    return keys


_LOW24 = np.uint64(0xFFFFFF)


_HIGH40 = np.uint64(0xFFFFFFFFFF000000)


def _pack(keys: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    """Sampling value of pixels: the top 40 bits of their key, then their colour (24 bits).

    Ordering by it is canonical (a function of position and colour only), so the sample and its
    order do not depend on the tiling; ties are identical pixels.
    """
    rgb24 = pixels[:, 0].astype(np.uint64) << np.uint64(16)
    rgb24 |= pixels[:, 1].astype(np.uint64) << np.uint64(8)
    rgb24 |= pixels[:, 2]
    return (keys & _HIGH40) | rgb24


class _BottomK:
    """The ``k`` smallest sampling values (:func:`_pack`) seen so far; all of them when ``k`` is None."""

    def __init__(self, k: int | None) -> None:
        self.k = k
        self.values = np.empty(0, dtype=np.uint64)

    def bounds(self, n_new: int) -> tuple[int | None, int | None]:
        """``(tentative, safe)`` exclusive upper bounds on the keys of ``n_new`` offered pixels.

        Pixels whose key is at or above ``safe`` cannot enter (None: no bound). Keys are uniform,
        so with high probability all that enter lie below the much smaller ``tentative`` bound,
        which saves gathering the others; :meth:`enough_below` checks that.
        """
        k = self.k
        if k is None:
            return None, None
        safe = None
        if self.values.size >= k:
            top = (int(self.values.max()) >> 24) + 1
            safe = None if top >= 1 << 40 else top << 24
        total = self.values.size + n_new
        q = (k + 8.0 * math.sqrt(k) + 64.0) / total
        if total <= k or q >= 1.0:
            return safe, safe
        tentative = int(q * 2.0**40) << 24
        return (tentative if safe is None else min(tentative, safe)), safe

    def enough_below(self, n_candidates: int, bound: int) -> bool:
        """Whether ``n_candidates`` new values below ``bound`` plus the kept ones below it reach ``k``."""
        return (
            self.k is None or n_candidates + int(np.count_nonzero(self.values < np.uint64(bound))) >= self.k
        )

    def offer(self, values: np.ndarray) -> None:
        merged = np.concatenate([self.values, values]) if self.values.size else values
        if self.k is not None and merged.size > self.k:
            merged = np.partition(merged, self.k - 1)[: self.k]
        self.values = merged

    def sample(self, ordered: bool = True) -> np.ndarray:
        """``(m, 3)`` uint8 sampled pixels, in canonical order (or as kept, for order-free uses)."""
        v = np.sort(self.values) if ordered else self.values
        out = np.empty((v.size, 3), dtype=np.uint8)
        out[:, 0] = v >> np.uint64(16)  # the uint8 cast keeps the low 8 bits
        out[:, 1] = v >> np.uint64(8)
        out[:, 2] = v
        return out

