"""Block-coded (JPEG) images: their noise is measured where block coding leaves it."""

import imagecodecs
import numpy as np
import pytest
import tifffile

import scopefx
from scopefx import samples


def _series(name="camera", size=512, defocus=(0, 4), seed=2):
    sharp = samples.bundled_image(name, size=size)
    return [
        samples.acquire(
            samples.defocus(sharp, d), photons=1000.0, read_noise=1.0, dtype=np.uint8, seed=seed
        )
        for d in defocus
    ]


def _jpeg(image, quality):
    return imagecodecs.jpeg8_decode(imagecodecs.jpeg8_encode(image, level=quality))


@pytest.mark.parametrize("quality", [75])
def test_jpeg_of_a_defocused_image_does_not_score_like_an_in_focus_one(quality):
    sharp, blurred = _series()
    lossless = [scopefx.focus_score(i, modality="brightfield").features for i in (sharp, blurred)]
    coded = [
        scopefx.focus_score(_jpeg(i, quality), modality="brightfield").features
        for i in (sharp, blurred)
    ]
    # before: JPEG's error at the block scale filled the defocused image with features
    assert coded[1] < 0.5 * lossless[0]
    assert coded[1] < 0.5 * coded[0]
    # and a JPEG image scores within a factor 2 of the same image stored losslessly
    for jpeg_count, lossless_count in zip(coded, lossless, strict=True):
        assert 0.5 < jpeg_count / lossless_count < 2.0


def test_block_coding_is_flagged_from_the_pixels():
    sharp, _ = _series()
    assert not scopefx.focus_score(sharp).block_coded
    result = scopefx.focus_score(_jpeg(sharp, 75))
    assert result.block_coded
    assert result.noise_scale_px > 1
    assert result.summary()["block_coded"] is True
    # a crop off the 8-pixel grid is found as well
    assert scopefx.focus_score(_jpeg(sharp, 75)[3:, 5:]).block_coded


def test_jpeg_in_tiff_file_is_scored_like_its_lossless_pixels(tmp_path):
    sharp, blurred = _series()
    paths = []
    for name, image in (("sharp", sharp), ("blurred", blurred)):
        path = tmp_path / f"{name}.tif"
        tifffile.imwrite(path, image, compression="jpeg", compressionargs={"level": 75})
        paths.append(path)
    sharp_result, blurred_result = (scopefx.focus_score(p) for p in paths)
    assert blurred_result.features < 0.5 * sharp_result.features
    assert sharp_result.features == pytest.approx(scopefx.focus_score(sharp).features, rel=0.5)
    assert sharp_result.block_coded and blurred_result.block_coded


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32"])
def test_a_noiseless_image_once_stored_as_jpeg_still_ranks_sharp_above_blurred(dtype):
    """The bundled retina carries a faint JPEG grid and no noise: its own texture at 4 px must
    not be taken for noise (the sharp copy scored below a 3 px blur: 550 vs 664 at 8 bits)."""
    from scipy import ndimage

    sharp = samples.make_mosaic(grid=(1, 1), tile_px=512, name="retina", dtype=dtype).tiles[0]
    blurred = ndimage.gaussian_filter(sharp, 3)
    scores = [scopefx.focus_score(i).features for i in (sharp, blurred)]
    assert scores[0] > 2 * scores[1], scores
