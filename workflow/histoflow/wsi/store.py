"""Chunked zarr stores of slide-sized arrays (zarr 2 or 3) and a background writer of row blocks."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..io import PathLike

#: Rows (and columns) of one zarr chunk of the probability and label stores; the inference band
#: holds ``tile + CHUNK`` rows and is written out a chunk row at a time.
CHUNK = 512


def zarr_major() -> int:
    """The installed zarr's major version (3: zarr format 3 stores, 2: format 2)."""
    import zarr

    return int(zarr.__version__.split(".")[0])


def root_file() -> str:
    """The group metadata file at a store's root (``zarr.json``, or ``.zgroup`` with zarr 2).

    A rule's output names a user-facing store by this file instead of ``directory()``: Snakemake writes
    its ``.snakemake_timestamp`` into directory outputs, a foreign file NGFF readers and zarr warn about.
    """
    return "zarr.json" if zarr_major() >= 3 else ".zgroup"


def store_of(root: PathLike) -> Path:
    """The store a rule names by its root file (:func:`root_file`): ``x.zarr/zarr.json`` -> ``x.zarr``."""
    root = Path(root)
    if root.name != root_file():
        raise ValueError(f"{root}: not a zarr store's root file ({root_file()})")
    return root.parent


def open_group(path: PathLike, mode: str = "r") -> Any:
    """Open a zarr group (zarr 2 or 3)."""
    import zarr

    return zarr.open_group(str(path), mode=mode)


def create_array(group: Any, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], dtype: Any,
                 dimension_names: tuple[str, ...] | None = None) -> Any:
    """A zero-filled, Blosc-LZ4 compressed array in a zarr group.

    The array is made by zarr 3 ``create_array`` (with ``dimension_names``, as NGFF 0.5 asks) or zarr 2
    ``create_dataset`` (which has no place for them).
    """
    chunks = tuple(max(1, min(c, s)) if s else max(1, c) for c, s in zip(chunks, shape, strict=True))
    if hasattr(group, "create_array"):
        from zarr.codecs import BloscCodec

        return group.create_array(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,
                                  compressors=BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"),
                                  dimension_names=dimension_names)
    from numcodecs import Blosc  # pragma: no cover - zarr 2

    return group.create_dataset(name, shape=shape, chunks=chunks, dtype=dtype, fill_value=0,  # pragma: no cover
                                compressor=Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE))


_FLUSH_COLS = 8192


class _Writer:
    """Writes row blocks into a zarr array in a background thread (at most one more block waits)."""

    def __init__(self, array: Any) -> None:
        self.array = array
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="zarr-writer")
        self.pending: list[Future[Any]] = []

    def write(self, r0: int, block: np.ndarray) -> None:
        while len(self.pending) >= 1:
            self.pending.pop(0).result()
        r1 = r0 + block.shape[1]
        self.pending.append(self.pool.submit(self.array.__setitem__, (slice(None), slice(r0, r1)), block))

    def close(self) -> None:
        try:
            for f in self.pending:
                f.result()
        finally:
            self.pool.shutdown(wait=True)

