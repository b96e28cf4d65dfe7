"""OME-TIFFs with hand-written OME-XML, as acquisition software writes them: one whose OME-XML
names another file for one of its planes (the multi-file OME attack, shared by the security
tests and the vendor-file tests), and any set of images (:func:`ome_image`,
:func:`write_ome_xml`) for the vendor-file tests."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["ome_image", "plant_ome_reference", "write_ome_xml"]


def plant_ome_reference(path: Path, other: str) -> None:
    """Write a one-plane OME-TIFF at ``path`` (pixels 1) that names ``other`` for plane 2."""
    own, foreign = uuid.uuid4(), uuid.uuid4()
    tifffile.imwrite(path, np.ones((16, 16), np.uint16), ome=True)
    xml = f"""<?xml version="1.0" encoding="UTF-8"?>
<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06" UUID="urn:uuid:{own}">
<Image ID="Image:0"><Pixels ID="Pixels:0" DimensionOrder="XYZCT" Type="uint16" SizeX="16"
 SizeY="16" SizeZ="2" SizeC="1" SizeT="1"><Channel ID="Channel:0:0" SamplesPerPixel="1"/>
<TiffData FirstZ="0" IFD="0" PlaneCount="1"><UUID FileName="{path.name}">urn:uuid:{own}</UUID>
</TiffData>
<TiffData FirstZ="1" IFD="0" PlaneCount="1"><UUID FileName="{other}">urn:uuid:{foreign}</UUID>
</TiffData></Pixels></Image></OME>"""
    tifffile.tiffcomment(path, comment=xml.encode())


def ome_image(
    k: int,
    shape: tuple[int, int],
    *,
    positions_um: list[tuple[float, float]],
    ifds: list[int] | None = None,
    files: tuple[str, str] | None = None,
    pixels: str = 'PhysicalSizeX="0.5" PhysicalSizeY="0.5"',
    unit: str = "µm",
    name: str | None = None,
) -> str:
    """The OME-XML ``Image`` element of image ``k``: one channel, one z plane, a time point per
    entry of ``positions_um`` (stage x, y of each; ``unit`` their unit) read from the pages
    ``ifds`` (default ``k``, ``k + 1``, ...) of the file ``files`` = (``FileName``, UUID) where
    given, else of the file that holds the XML. ``pixels``: attributes of ``Pixels``."""
    size_y, size_x = shape
    ifds = ifds if ifds is not None else [k + t for t in range(len(positions_um))]
    uuid_element = "" if files is None else f'<UUID FileName="{files[0]}">{files[1]}</UUID>'
    data = "".join(
        f'<TiffData FirstT="{t}" IFD="{ifd}" PlaneCount="1">{uuid_element}</TiffData>'
        for t, ifd in enumerate(ifds)
    )
    planes = "".join(
        f'<Plane TheZ="0" TheC="0" TheT="{t}" PositionX="{x}" PositionY="{y}" '
        f'PositionXUnit="{unit}" PositionYUnit="{unit}"/>'
        for t, (x, y) in enumerate(positions_um)
    )
    label = f' Name="{name}"' if name else ""
    return (
        f'<Image ID="Image:{k}"{label}><Pixels ID="Pixels:{k}" DimensionOrder="XYZCT" '
        f'Type="uint16" SizeX="{size_x}" SizeY="{size_y}" SizeZ="1" SizeC="1" '
        f'SizeT="{len(positions_um)}" {pixels}><Channel ID="Channel:{k}:0" SamplesPerPixel="1"/>'
        f"{data}{planes}</Pixels></Image>"
    )


def write_ome_xml(path: Path, pages: list[np.ndarray], images: list[str], *, own: str = "") -> None:
    """A TIFF of ``pages`` whose first page describes them with the OME-XML of ``images``
    (:func:`ome_image`), as acquisition software writes it; ``own``: the file's UUID."""
    root = f' UUID="{own}"' if own else ""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>'
        f'<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"{root}>'
        f"{''.join(images)}</OME>"
    )
    with tifffile.TiffWriter(path) as w:
        for i, page in enumerate(pages):
            w.write(page, description=xml.encode() if i == 0 else None, metadata=None)
