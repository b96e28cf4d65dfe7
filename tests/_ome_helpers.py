"""An OME-TIFF whose OME-XML names another file for one of its planes: the multi-file OME
attack, shared by the security tests and the vendor-file tests."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import tifffile

__all__ = ["plant_ome_reference"]


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
