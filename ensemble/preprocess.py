"""Turn a person's picture of a digit into an MNIST-style 28x28 uint8 digit (light ink on black).

One pipeline, shared by every image endpoint of the service (Pillow + numpy only, no scipy/torch):

- ``open_image(data)``: decode untrusted bytes safely. Empty, oversized (bytes or pixels; the
  pixel count is read from the header and checked BEFORE the pixels are decoded, and Pillow's own
  decompression-bomb guard ``Image.MAX_IMAGE_PIXELS`` is set to the same limit), zero-sized,
  undecodable or corrupt inputs raise an ``InvalidImageError`` subclass whose message says what is
  wrong. EXIF orientation is applied; only the first frame of animations is used.
- ``prepare_digit(image)``: one digit, the MNIST recipe. To grayscale (transparent pixels count as
  background), invert when the ink is darker than the background (dark ink on paper), enlarge a small
  picture (under 112 px) so that it is fitted like a large one, level uneven lighting (subtract the paper's
  own brightness), subtract the background level, stretch the ink peak to full scale and drop paper noise,
  crop to the ink, fit the longest side into 20 pixels keeping the aspect ratio, and paste into 28x28 so
  that the centre of mass lands where MNIST has it, (14, 14) (integer shift, clipped so the digit stays
  inside the frame). ``prepare_digit_bytes(data, name)``: ``open_image`` then this, as ``/compare`` does.
- ``prepare_pair(image)``: one course-style pair (left digit in columns 0-27, right in 28-55). Same
  grayscale / polarity handling and the same blank test (``require_ink``) on each half, then only a
  resize to 28x56 when the size differs: course data is already centred, so a 28x56 light-on-black
  uint8 image passes through unchanged.
"""

from __future__ import annotations

import functools
import io
import math
import typing as t

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ensemble.contract import DIGIT_SIZE, PAIR_SHAPE, PIXEL_DTYPE, PIXEL_MAX

# DIGIT_SIZE (the MNIST frame) and PAIR_SHAPE (one course pair) are the input contract's (ensemble.contract).
BOX_SIZE = 20  # the ink is fitted into BOX_SIZE x BOX_SIZE, as in MNIST
#: Where the centre of mass goes, in pixel-index coordinates (row, col). MNIST digits have theirs at
#: 14.0 on average (measured on data/sources.npz: 13.97, 14.03), not at the grid centre 13.5.
CENTRE = 14.0

#: Refuse images above this many pixels (width x height, read from the header before decoding).
#: 25 MP covers ordinary phone photos (12 MP = 4032 x 3024) with room to spare.
MAX_IMAGE_PIXELS = 25_000_000
#: Refuse encoded images above this many bytes.
MAX_IMAGE_BYTES = 20 * 1024 * 1024
#: Larger images are box-reduced to at most this side before the float pipeline (speed, memory).
WORK_MAX_SIDE = 1024
#: Smaller pictures are enlarged (bilinear, by a whole factor) to at least this side before the crop and
#: the fit into 20x20, so that a digit is always fitted from several source pixels per output pixel (area
#: averaging). Without it a 28-px picture was fitted at a scale of about 1, pixel for pixel and crisp, while
#: the same digit enlarged was area-averaged: in 1,000 free-form pairs of MNIST test digits the digits read
#: 0.880 right at 28 px and 0.950 enlarged to 112 px (docs/priors.md), the same digits. 4 x 28 px.
WORK_MIN_SIDE = 112
#: Uneven lighting (a photo lit from one side) is levelled by subtracting the paper's own brightness, estimated
#: by a grey-level opening (the ink, thinner than the window, is removed; the slow light gradient is kept) on a
#: copy reduced to at most LIGHTING_SIDE pixels, with a window of LIGHTING_WINDOW of its side. Free-form photos
#: with a 25-45% light falloff read 0.862 right without it and 0.95 when evenly lit (docs/priors.md).
LIGHTING_SIDE = 64
LIGHTING_WINDOW = 0.5
#: Blank test (``require_ink``, shared by every image endpoint): a picture, or a pair's half, holds a
#: digit when its ink, smoothed over 3x3 pixels and measured above the background (the median), peaks
#: at least MIN_CONTRAST of full scale AND at least INK_TO_NOISE times the pixel noise (estimated from
#: neighbouring-pixel differences, which strokes barely move). Measured on 12,000 course-like halves
#: (severity 3.5-8.5, heavily occluded and dimmed ones included): smoothed peak >= 0.036 and >= 11.8x
#: the noise; uniform pictures score 0, noisy blank photos (Gaussian or JPEG noise) at most 2.6x.
MIN_CONTRAST = 0.02
INK_TO_NOISE = 5.0
#: After stretching the ink peak to 1, values under NOISE_FLOOR, or under NOISE_SIGMAS times the
#: background's noise (a robust sigma: the median absolute deviation), become background.
NOISE_FLOOR = 0.10
NOISE_SIGMAS = 4.0
#: The crop box: the bounding box of pixels at least CROP_LEVEL bright (robust to faint paper shading),
#: widened by CROP_MARGIN of its size on each side, then tightened to the remaining ink inside it.
CROP_LEVEL = 0.25
CROP_MARGIN = 0.05
#: Formats Pillow may read except EPS, whose plugin runs Ghostscript on the bytes.
_BLOCKED_FORMATS = frozenset({"EPS"})

# Pillow's own guard: DecompressionBombError above 2x this, a warning above it. open_image checks the
# (configurable) limit itself first; this catches any decoder path that would bypass that check.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS


class InvalidImageError(ValueError):
    """An uploaded image that cannot be used; the message says what is wrong with it."""


class EmptyUploadError(InvalidImageError):
    """Zero bytes were uploaded."""


class UnreadableImageError(InvalidImageError):
    """The bytes are not an image Pillow can decode (or are corrupt / truncated / unsupported)."""


class ImageTooLargeError(InvalidImageError):
    """Too many bytes or pixels (a possible decompression bomb)."""


class DegenerateImageError(InvalidImageError):
    """An image with zero width or height."""


class BlankImageError(InvalidImageError):
    """No ink: the image is (nearly) uniform, so there is no digit to read."""


@functools.cache  # asked for every upload, twice (header_pixels, open_image): the registry does not change
def _allowed_formats() -> list[str]:
    Image.init()
    return [f for f in Image.OPEN if f not in _BLOCKED_FORMATS]


def open_image(data: bytes, max_pixels: int = MAX_IMAGE_PIXELS, max_bytes: int = MAX_IMAGE_BYTES,
               name: str = "image") -> Image.Image:
    """Decode untrusted image bytes into a loaded, upright PIL image (first frame).

    The size in pixels comes from the header and is checked before any pixel is decoded.
    Raises an ``InvalidImageError`` subclass naming ``name`` and the problem.
    """
    if not data:
        raise EmptyUploadError(f"{name}: empty upload (0 bytes); send the image file's content")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"{name}: {len(data)} bytes is more than the limit of {max_bytes} bytes")
    image = _open_header(data, max_pixels, name)
    width, height = image.size
    if width <= 0 or height <= 0:
        raise DegenerateImageError(f"{name}: the image is {width}x{height} pixels; it has no area")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: {width}x{height} = {width * height} pixels is more than the limit of {max_pixels} pixels"
        )
    _decode(image, name)
    try:
        image = ImageOps.exif_transpose(image)
    except Exception:  # a malformed EXIF block only costs the orientation
        pass
    return image


def header_pixels(data: bytes) -> int | None:
    """The number of pixels the image header declares (nothing decoded); None when there is no readable header."""
    try:
        with Image.open(io.BytesIO(data), formats=_allowed_formats()) as image:
            width, height = image.size
    except Exception:  # untrusted bytes: any parser failure means "not a small, readable picture"
        return None
    return width * height


def _open_header(data: bytes, max_pixels: int, name: str) -> Image.Image:
    """Pillow's lazy open: the format and size from the header, no pixel decoded yet."""
    try:
        return Image.open(io.BytesIO(data), formats=_allowed_formats())
    except Image.DecompressionBombError as err:  # Pillow's own guard fired first (over 2x its limit)
        raise ImageTooLargeError(
            f"{name}: more than the limit of {max_pixels} pixels, refused before decoding ({err})"
        ) from err
    except UnidentifiedImageError as err:
        raise UnreadableImageError(
            f"{name}: not an image format Pillow can read ({len(data)} bytes starting {data[:8]!r})"
        ) from err
    except Exception as err:  # any parser failure on untrusted bytes is the client's problem
        raise UnreadableImageError(f"{name}: unreadable image header ({type(err).__name__}: {err})") from err


def _decode(image: Image.Image, name: str) -> None:
    """Decode the pixels of an image whose size was accepted (a large JPEG at a reduced scale)."""
    if image.format == "JPEG":
        # Decode a large JPEG at a reduced scale (1/2 .. 1/8) that still has >= WORK_MAX_SIDE pixels.
        image.draft(image.mode, (WORK_MAX_SIDE, WORK_MAX_SIDE))
    try:
        image.load()
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"{name}: refused as a decompression bomb ({err})") from err
    except Exception as err:  # truncated data, bad chunks, unsupported codecs, ...
        raise UnreadableImageError(f"{name}: corrupt or truncated {image.format} data ({type(err).__name__}: {err})"
                                   ) from err


def _reduce(image: Image.Image) -> Image.Image:
    side = max(image.size)
    if side <= WORK_MAX_SIDE:
        return image
    return image.reduce(math.ceil(side / WORK_MAX_SIDE))


def _high_depth_to_float(image: Image.Image) -> np.ndarray:
    """16-bit / 32-bit integer and float grayscale modes to [0, 1]."""
    if image.mode.startswith("I;16"):
        image = image.convert("I")  # Pillow's reduce and numpy views are simplest on "I"
        full_scale = 65535.0
    else:
        full_scale = None
    image = _reduce(image.convert("F") if image.mode == "I" else image)
    values = np.asarray(image, dtype=np.float32)
    if full_scale is None:  # "I" or "F": infer the range from the data
        peak = float(values.max()) if values.size else 0.0
        full_scale = 1.0 if peak <= 1.0 else 255.0 if peak <= 255.0 else 65535.0
    return np.clip(values / full_scale, 0.0, 1.0)


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info


def to_grayscale(image: Image.Image) -> np.ndarray:
    """Luminance in [0, 1] as float32 (H, W); transparent pixels become background.

    Transparency: when the opaque pixels are the minority they are the strokes (a canvas drawing), so
    the transparent rest is filled with the opposite extreme of their colour; when they are the
    majority they are the paper, so the transparent rest is filled with their median.
    """
    if image.mode.startswith("I") or image.mode == "F":
        return _high_depth_to_float(image)
    try:
        if _has_alpha(image):
            rgba = _reduce(image.convert("RGBA"))
            luminance = np.asarray(rgba.convert("L"), dtype=np.float32) / 255.0
            alpha = np.asarray(rgba.getchannel("A"), dtype=np.float32) / 255.0
        else:
            gray = image if image.mode == "L" else (image.convert("RGB") if image.mode not in ("RGB", "1") else image)
            luminance = np.asarray(_reduce(gray.convert("L")), dtype=np.float32) / 255.0
            return luminance
    except (ValueError, OSError) as err:
        raise UnreadableImageError(f"image mode {image.mode!r} cannot be converted to grayscale ({err})") from err
    opaque = alpha > 0.5
    if not opaque.any():
        return np.zeros_like(luminance)  # fully transparent: all background
    if opaque.mean() < 0.5:
        stroke = float(np.average(luminance, weights=alpha))
        background = 1.0 if stroke < 0.5 else 0.0
    else:
        background = float(np.median(luminance[opaque]))
    return alpha * luminance + (1.0 - alpha) * background


def _light_on_dark(gray: np.ndarray) -> np.ndarray:
    """Invert when the ink is darker than the background.

    The background is the median pixel (ink covers less than half of a picture); the ink is whichever
    extreme lies further from it. Comparing to the background rather than to mid-grey also gets dim
    photos of paper (paper at 0.4, ink at 0.05) and bright ink on grey right.
    """
    background = float(np.median(gray))
    return 1.0 - gray if background - float(gray.min()) > float(gray.max()) - background else gray


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values * PIXEL_MAX), 0, PIXEL_MAX).astype(PIXEL_DTYPE)


def _centre_of_mass(values: np.ndarray) -> tuple[float, float]:
    total = float(values.sum())
    rows = np.arange(values.shape[0], dtype=np.float64)
    cols = np.arange(values.shape[1], dtype=np.float64)
    return float(values.sum(axis=1) @ rows) / total, float(values.sum(axis=0) @ cols) / total


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive, of the True pixels of a non-empty mask."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def prepare_digit(image: Image.Image) -> np.ndarray:
    """One digit (any size, any mode, dark-on-light or light-on-dark) -> (28, 28) uint8, MNIST style.

    Raises ``BlankImageError`` when there is no visible ink.
    """
    gray = _light_on_dark(to_grayscale(image))
    require_ink(gray)
    gray = _enlarge_small(gray)
    gray = gray - _paper_level(gray)
    background = float(np.median(gray))
    noise = NOISE_SIGMAS * 1.4826 * float(np.median(np.abs(gray - background)))  # robust sigma of the paper
    ink = np.clip(gray - background, 0.0, None)  # background level -> 0
    peak = float(ink.max())
    ink /= peak
    # The paper-noise floor; when the "noise" is at least the peak, the median deviation measured the
    # ink itself (a digit covering much of a small picture, e.g. a course half), not the paper.
    ink[ink < (max(NOISE_FLOOR, noise / peak) if noise < peak else NOISE_FLOOR)] = 0.0

    # Crop: the box of the clearly inked pixels, widened by a margin, then tightened to the ink
    # (>= NOISE_FLOOR) inside it, so the anti-aliased fringe is kept and far-off specks are not.
    top, bottom, left, right = _bounding_box(ink >= CROP_LEVEL)
    margin = math.ceil(CROP_MARGIN * max(bottom - top, right - left))
    top, left = max(0, top - margin), max(0, left - margin)
    bottom, right = min(ink.shape[0], bottom + margin), min(ink.shape[1], right + margin)
    window = ink[top:bottom, left:right]
    top, bottom, left, right = _bounding_box(window > 0)
    crop = window[top:bottom, left:right]

    height, width = crop.shape
    scale = BOX_SIZE / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    box = np.asarray(Image.fromarray(crop.astype(np.float32)).resize((new_w, new_h), resample),
                     dtype=np.float32)
    box = np.clip(box, 0.0, None)
    box_peak = float(box.max())
    if box_peak <= 0.0:  # cannot happen with a non-empty crop, but never divide by zero
        raise BlankImageError(f"no digit found: the ink vanished when fitted into {BOX_SIZE}x{BOX_SIZE}")
    box /= box_peak

    com_row, com_col = _centre_of_mass(box)
    top = int(np.clip(round(CENTRE - com_row), 0, DIGIT_SIZE - new_h))
    left = int(np.clip(round(CENTRE - com_col), 0, DIGIT_SIZE - new_w))
    out = np.zeros((DIGIT_SIZE, DIGIT_SIZE), dtype=np.float32)
    out[top:top + new_h, left:left + new_w] = box
    return _to_uint8(out)


def _enlarge_small(gray: np.ndarray) -> np.ndarray:
    """A picture whose longest side is under WORK_MIN_SIDE, enlarged by the smallest whole factor that reaches
    it (bilinear: no overshoot, values stay in [0, 1]); larger pictures as they are."""
    factor = math.ceil(WORK_MIN_SIDE / max(gray.shape))
    if factor <= 1:
        return gray
    height, width = gray.shape
    enlarged = Image.fromarray(gray.astype(np.float32)).resize((width * factor, height * factor),
                                                               Image.Resampling.BILINEAR)
    return np.asarray(enlarged, dtype=np.float32)


def _running(values: np.ndarray, size: int, reduce: t.Callable[..., np.ndarray]) -> np.ndarray:
    """A separable running minimum or maximum over size x size windows (edges replicated)."""
    half = size // 2
    for axis in (0, 1):
        padded = np.pad(values, [(half, half) if a == axis else (0, 0) for a in (0, 1)], mode="edge")
        values = reduce(np.lib.stride_tricks.sliding_window_view(padded, size, axis=axis), axis=-1)
    return values


def _paper_level(gray: np.ndarray) -> np.ndarray:
    """The background's brightness at every pixel of a light-on-dark picture: a grey-level opening (running
    minimum, then maximum) of a reduced copy, enlarged back. Strokes narrower than the window vanish from it;
    light that changes slowly across the picture stays, and is then subtracted."""
    height, width = gray.shape
    factor = max(1, math.ceil(max(height, width) / LIGHTING_SIDE))
    small = np.asarray(Image.fromarray(gray.astype(np.float32)).reduce(factor), dtype=np.float32)
    size = max(3, round(LIGHTING_WINDOW * max(small.shape)) | 1)
    opened = _running(_running(small, size, np.min), size, np.max)
    level = Image.fromarray(opened.astype(np.float32)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(level, dtype=np.float32)


def _box3(values: np.ndarray) -> np.ndarray:
    """3x3 box mean (edges replicated): averages independent pixel noise down by 3, keeps strokes."""
    padded = np.pad(values, 1, mode="edge")
    height, width = values.shape
    return sum(padded[i:i + height, j:j + width] for i in range(3) for j in range(3)) / 9.0


def ink_level(gray: np.ndarray) -> tuple[float, float]:
    """(smoothed ink peak above the background, pixel noise sigma) of a light-on-dark [0, 1] picture."""
    if gray.size == 0:
        return 0.0, 0.0
    ink = np.clip(gray - float(np.median(gray)), 0.0, None)
    peak = float(_box3(ink).max())
    # Noise from neighbouring-pixel differences: blurred strokes and paper shading barely change from one
    # pixel to the next, independent noise does (MAD -> sigma, / sqrt(2) for the difference of two pixels).
    axis = 1 if gray.shape[1] > 1 else 0
    diffs = np.abs(np.diff(gray, axis=axis))
    noise = float(np.median(diffs)) * 1.4826 / math.sqrt(2) if diffs.size else 0.0
    return peak, noise


def require_ink(gray: np.ndarray, what: str = "the image") -> None:
    """Raise BlankImageError when a light-on-dark picture holds no digit (uniform, or noise only)."""
    peak, noise = ink_level(gray)
    need = max(MIN_CONTRAST, INK_TO_NOISE * noise)
    if peak < need:
        raise BlankImageError(f"no digit found: {what} is blank (ink contrast {peak:.3f} of full scale, "
                              f"need {need:.3f})")


def prepare_pair(image: Image.Image) -> np.ndarray:
    """One course-style pair image -> (28, 56) uint8, light ink on black.

    Grayscale and polarity as for ``prepare_digit``; a blank half raises ``BlankImageError`` (the same
    test as ``prepare_digit``); a size other than 28x56 (height x width) is resized to it. Nothing else
    changes: a 28x56 light-on-dark grayscale image passes through as is.
    """
    gray = _light_on_dark(to_grayscale(image))
    # The same blank test as single digits, on each half (a pair needs two digits).
    half = gray.shape[1] // 2
    require_ink(gray[:, :half], "the left half")
    require_ink(gray[:, half:], "the right half")
    if gray.shape != PAIR_SHAPE:
        height, width = gray.shape
        resample = Image.Resampling.BOX if height > PAIR_SHAPE[0] and width > PAIR_SHAPE[1] else (
            Image.Resampling.BILINEAR)
        resized = Image.fromarray(gray.astype(np.float32)).resize((PAIR_SHAPE[1], PAIR_SHAPE[0]), resample)
        gray = np.asarray(resized, dtype=np.float32)
    return _to_uint8(gray)


def prepare_digit_bytes(data: bytes, name: str = "image") -> np.ndarray:
    """``/compare``'s path for one uploaded picture: ``open_image`` then ``prepare_digit``; every refusal
    (``InvalidImageError``) names ``name``."""
    image = open_image(data, name=name)
    try:
        return prepare_digit(image)
    except BlankImageError as err:
        raise BlankImageError(f"{name}: {err}") from err


def prepare_pair_bytes(data: bytes, name: str = "image") -> np.ndarray:
    """``/compare_pair``'s path for one uploaded pair picture: ``open_image`` then ``prepare_pair``."""
    image = open_image(data, name=name)
    try:
        return prepare_pair(image)
    except BlankImageError as err:
        raise BlankImageError(f"{name}: {err}") from err
