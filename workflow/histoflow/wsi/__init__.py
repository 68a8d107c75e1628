"""Whole-slide images: reading, tissue detection, streaming tiled inference, region split/merge and outputs.

Slides are read at a chosen resolution, tiled inference streams with bounded memory, and the outputs are
pyramidal OME-TIFF and QuPath GeoJSON.

The stage in five steps, each usable on its own:

1. :func:`open_slide` opens a slide (OpenSlide for SVS/NDPI/MRXS/..., tifffile + zarr for
   pyramidal and OME-TIFF, or any ordinary image in memory) at a resolution given in µm per pixel
   or as a pyramid level, and reads regions of it as ``uint8 (h, w, 3)`` RGB.
2. :func:`detect_tissue` finds tissue on a low-resolution thumbnail (Otsu on saturation and/or
   optical density, then closing, hole filling and small-object removal); :class:`TissueMask`
   says how much of a tile is tissue. Background tiles are never sent to the model.
3. :func:`predict_slide` runs a predictor over the tissue tiles of a slide, evenly spaced with
   overlap (:func:`histoflow.tiling.tile_starts`) and blended with a smooth window, reading and
   stain-normalizing tiles in DataLoader workers and accumulating the weighted outputs in a band of
   rows that moves down the slide; finished rows are normalized by their summed weights and written
   to a chunked zarr store, so memory is bounded by the slide's width, never its area. Every pixel
   gets exactly the operations, in the same order, as in :func:`histoflow.tiling.predict_tiled` on
   the whole image, so the two agree bit for bit where the image fits in memory.
4. :func:`split_regions` cuts the tile grid into row bands for separate jobs; each job also runs
   the tile rows above its band that overlap it (its halo), so it finishes its own rows exactly as
   one job over the whole slide would, and :func:`merge_regions` only concatenates bands.
5. :func:`write_ome_pyramid` writes a zarr array as a tiled, pyramidal OME-TIFF (sub-resolutions
   as SubIFDs, physical pixel size in the OME-XML and the TIFF resolution tags) tile by tile;
   :func:`slide_instances` turns the probability map into instance labels block by block (each
   object is kept by the block that holds the top-left corner of its connected component) and
   streams them into a QuPath GeoJSON FeatureCollection with per-object measurements.

Modules: ``reader`` (:func:`open_slide`, :class:`Slide`, :func:`find_slides`), ``tissue``
(:func:`detect_tissue`, :func:`tissue_mask`), ``inference`` (grid, :func:`predict_slide`, split / merge),
``store`` (zarr arrays), ``outputs`` (OME-TIFF pyramid, instances and GeoJSON). Synthetic slides for tests
and benchmarks live in :mod:`histoflow.synthetic.slides`.

Coordinates: ``(y, x)`` = (row, column) in pixels of the slide *at the chosen resolution* unless
stated otherwise; GeoJSON coordinates are level-0 pixels (what QuPath shows for the slide file).
"""

from .inference import (
    Region,
    TileGrid,
    cpu_normalizer,
    limit_malloc_retention,
    merge_regions,
    plan_grid,
    predict_slide,
    split_regions,
)
from .ngff import LEVEL0, image_levels, write_ngff
from .outputs import slide_instances, write_ome_pyramid
from .reader import (
    IMAGE_SUFFIXES,
    MPP_TOLERANCE,
    OPENSLIDE_SUFFIXES,
    SLIDE_SUFFIXES,
    TIFF_SUFFIXES,
    Level,
    Slide,
    find_slides,
    open_slide,
)
from .store import CHUNK, create_array, open_group, root_file, store_of
from .tissue import (
    TISSUE_THRESHOLD_RANGE,
    TissueMask,
    detect_tissue,
    optical_density,
    saturation,
    tissue_mask,
)

__all__ = [
    "CHUNK",
    "LEVEL0",
    "IMAGE_SUFFIXES",
    "MPP_TOLERANCE",
    "OPENSLIDE_SUFFIXES",
    "SLIDE_SUFFIXES",
    "TIFF_SUFFIXES",
    "TISSUE_THRESHOLD_RANGE",
    "Level",
    "Region",
    "Slide",
    "TileGrid",
    "TissueMask",
    "cpu_normalizer",
    "create_array",
    "detect_tissue",
    "find_slides",
    "image_levels",
    "limit_malloc_retention",
    "merge_regions",
    "open_group",
    "open_slide",
    "optical_density",
    "plan_grid",
    "predict_slide",
    "root_file",
    "saturation",
    "slide_instances",
    "store_of",
    "split_regions",
    "tissue_mask",
    "write_ngff",
    "write_ome_pyramid",
]
