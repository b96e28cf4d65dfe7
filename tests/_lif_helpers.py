"""A Leica LIF tile scan written for the tests: the binary layout of Leica's "LIF file format"
(version 2) as liffile and Bio-Formats read it, with only what a tile scan needs.

The file is a header block (``0x70``, its size, ``0x2A``, the XML's length in characters, the
XML in UTF-16-LE) and one memory block per image (``0x70``, a reserved word, ``0x2A``, the
block's size as uint64, ``0x2A``, the id's length, the id in UTF-16-LE, the pixels). The XML
describes the image: its dimensions (X: ``DimID`` 1, Y: 2, the tiles: 10), each with its
byte stride (``BytesInc``) and physical ``Length`` in metres, the channels, and the
``TileScanInfo`` attachment: per tile its grid field and stage position (``PosX``/``PosY``, in
metres), with the flags by which the stage's axes differ from the image's (``FlipX``,
``FlipY``, ``SwapXY``).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np


def write_lif(
    path: Path,
    tiles: Sequence[np.ndarray],
    stage_m: Sequence[tuple[float, float]],
    *,
    pixel_m: float = 0.65e-6,
    pixel_y_m: float | None = None,
    channel: str = "DAPI",
    fields: Sequence[tuple[int, int]] | None = None,
    flip_x: bool = False,
    flip_y: bool = False,
    swap_xy: bool = False,
    before: Sequence[np.ndarray] = (),
    more: Sequence[tuple[Sequence[np.ndarray], Sequence[tuple[float, float]]]] = (),
) -> Path:
    """Write ``tiles`` (uint16, one Y, X shape) as the tile scan of a LIF file, tile ``k`` at
    stage position ``stage_m[k]`` = (PosX, PosY) in metres, of pixels ``pixel_m`` across
    (``pixel_y_m`` down; default: square). ``before``: single-plane images
    stored ahead of the tile scan (an overview, as LAS X projects hold); ``more``: further
    tile scans after it, each ``(tiles, stage_m)`` ("TileScan 2", ...; default fields)."""
    images = [(f"Overview {k + 1}", [np.asarray(im, np.uint16)], None) for k, im in
              enumerate(before)]  # fmt: skip
    images.append(("TileScan 1", [np.asarray(t, np.uint16) for t in tiles], stage_m))
    for k, (more_tiles, more_stage) in enumerate(more):
        images.append((f"TileScan {k + 2}", [np.asarray(t, np.uint16) for t in more_tiles],
                       more_stage))  # fmt: skip
    elements, blocks = [], []
    for k, (name, planes, stage) in enumerate(images):
        h, w = planes[0].shape
        data = np.ascontiguousarray(np.stack(planes)).astype("<u2").tobytes()
        down = pixel_m if pixel_y_m is None else pixel_y_m
        dims = [("1", w, 2, (w - 1) * pixel_m), ("2", h, 2 * w, (h - 1) * down)]
        if stage is not None:
            dims.append(("10", len(planes), 2 * w * h, 0.0))
        dim_xml = "".join(
            f'<DimensionDescription DimID="{d}" NumberOfElements="{n}" Origin="0" '
            f'Length="{float(length)!r}" Unit="m" BytesInc="{inc}" BitInc="0"/>'
            for d, n, inc, length in dims
        )
        tile_xml = ""
        if stage is not None:
            grid = (fields if name == "TileScan 1" else None) or [(j, 0) for j in
                                                                   range(len(planes))]  # fmt: skip
            rows = [f'<Tile FieldX="{fx}" FieldY="{fy}" PosX="{float(x)!r}" PosY="{float(y)!r}"/>'
                    for (fx, fy), (x, y) in zip(grid, stage, strict=True)]  # fmt: skip
            tile_xml = (
                f'<Attachment Name="TileScanInfo" FlipX="{int(flip_x)}" FlipY="{int(flip_y)}" '
                f'SwapXY="{int(swap_xy)}">{"".join(rows)}</Attachment>'
            )
        block_id = f"MemBlock_{k}"
        elements.append(
            f"<Element Name={quoteattr(name)}><Data><Image><ImageDescription><Channels>"
            f'<ChannelDescription DataType="0" ChannelTag="0" Resolution="16" '
            f'NameOfMeasuredQuantity={quoteattr(channel)} Min="0" Max="65535" Unit="" '
            f'LUTName="Gray" IsLUTInverted="0" BytesInc="0" BitInc="0"/></Channels>'
            f"<Dimensions>{dim_xml}</Dimensions></ImageDescription>{tile_xml}</Image></Data>"
            f'<Memory Size="{len(data)}" MemoryBlockID="{block_id}"/><Children/></Element>'
        )
        blocks.append((block_id, data))
    xml = (
        '<LMSDataContainerHeader Version="2"><Element Name="project"><Data><Experiment/></Data>'
        '<Memory Size="0" MemoryBlockID="MemBlock_root"/><Children>'
        + "".join(elements)
        + "</Children></Element></LMSDataContainerHeader>"
    )
    text = xml.encode("utf-16-le")
    out = bytearray(struct.pack("<IIBI", 0x70, len(text) + 5, 0x2A, len(xml)) + text)
    for block_id, data in [("MemBlock_root", b""), *blocks]:
        name = block_id.encode("utf-16-le")
        out += struct.pack("<IIBQBI", 0x70, 0, 0x2A, len(data), 0x2A, len(block_id)) + name
        out += data
    Path(path).write_bytes(bytes(out))
    return Path(path)
