"""The course's corruption of one 28x28 digit, vectorised over a batch.

Written from the numbers in ``shared/reference/course-data-process.md`` (the process that made the
course's files), in its order, each step a function of a per-digit *severity* s (the course uses 6):

1. scale by ``1 + U(-0.05 s, 0.05 s)`` (side clamped to 16..40 px), centred on a black 36x36 canvas;
2. rotate the canvas about its centre by ``U(-6 s, 6 s)`` degrees;
3. crop 28x28 at offsets ``clamp(4 + U{-m..m}, 0, 8)``, ``m = min(8, 2 s)``: often 4 px off centre;
4. contrast, then brightness, each with factor ``1 + U(-0.15, 0.15) s / 3`` (Pillow semantics);
5. Gaussian noise with standard deviation ``3 s``, clipped, truncated to uint8;
6. Gaussian blur of radius ``0.2 s`` (when s >= 3);
7. one black line with probability ``0.35 + 0.05 s`` (when s >= 3), width ``U{1..max(1, s // 2)}``;
8. ``s // 2`` black rectangles, sides ``U{2..2 + 3 s}``, filled edge-inclusive.

The course ran Pillow one image at a time; here every step is batched numpy, because the training
loop draws fresh pairs every epoch and a per-image Pillow loop would cost more than the training.
Steps 1-3 are one inverse affine map sampled bilinearly (Pillow resamples twice; after the noise
and blur that follow, the difference does not show: see ``python -m training.realism``).
"""

from __future__ import annotations

import numpy as np

from ensemble.contract import DIGIT_SIZE

CANVAS = 36
COURSE_SEVERITY = 6.0
MAX_SEVERITY = 10.0
_MAX_BLUR_REACH = int(np.ceil(3 * 0.2 * MAX_SEVERITY))  # kernel half-width at the largest radius


def sample_severity(rng: np.random.Generator, n: int, center: float = COURSE_SEVERITY,
                    spread: float = 1.0) -> np.ndarray:
    """Per-digit severities uniform in [center - spread, center + spread], clipped to [0, 10]."""
    return np.clip(rng.uniform(center - spread, center + spread, n), 0.0, MAX_SEVERITY)


def _uniform_int(rng: np.random.Generator, low: np.ndarray | int, high: np.ndarray | int, n: int) -> np.ndarray:
    """Integers uniform in [low, high] inclusive, with per-element bounds."""
    low, high = np.broadcast_to(low, (n,)), np.broadcast_to(high, (n,))
    return low + np.floor(rng.random(n) * (high - low + 1)).astype(np.int64)


def _geometry(images: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Steps 1-3: scale onto the 36x36 canvas, rotate, crop 28x28, as one inverse map per image."""
    n = len(images)
    side = np.clip(np.rint(DIGIT_SIZE * (1 + rng.uniform(-0.05, 0.05, n) * s)), 16, 40)
    offset = (CANVAS - side) // 2
    angle = np.deg2rad(rng.uniform(-6, 6, n) * s)
    reach = np.minimum(8, np.floor(2 * s)).astype(np.int64)
    ox = np.clip(4 + _uniform_int(rng, -reach, reach, n), 0, 8)
    oy = np.clip(4 + _uniform_int(rng, -reach, reach, n), 0, 8)

    # Pixel centres in continuous canvas coordinates, relative to the canvas centre.
    grid = np.arange(DIGIT_SIZE, dtype=np.float32) + 0.5
    dy = grid[None, :, None] + oy[:, None, None] - CANVAS / 2
    dx = grid[None, None, :] + ox[:, None, None] - CANVAS / 2
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    cy = cos * dy - sin * dx + CANVAS / 2  # where on the canvas each output pixel comes from
    cx = sin * dy + cos * dx + CANVAS / 2
    inside = (cy >= 0) & (cy < CANVAS) & (cx >= 0) & (cx < CANVAS)  # the rotation fills black outside
    ratio = (DIGIT_SIZE / side)[:, None, None]
    sy = (cy - offset[:, None, None]) * ratio - 0.5  # source pixel coordinates
    sx = (cx - offset[:, None, None]) * ratio - 0.5
    return np.where(inside, _bilinear(images, sy, sx), 0.0)


def _bilinear(images: np.ndarray, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Sample (n, 28, 28) images at fractional coordinates (n, H, W), zero outside.

    Hand-written because scipy's map_coordinates takes one coordinate set for the whole array: a
    gather on a zero-bordered copy does the whole batch at once, at a fraction of the cost.
    """
    n = len(images)
    padded = np.zeros((n, DIGIT_SIZE + 2, DIGIT_SIZE + 2), np.float32)
    padded[:, 1:-1, 1:-1] = images
    flat = padded.reshape(n, -1)
    y = np.clip(y + 1, 0, DIGIT_SIZE + 1).reshape(n, -1)  # +1: into the padded frame
    x = np.clip(x + 1, 0, DIGIT_SIZE + 1).reshape(n, -1)
    y0 = np.minimum(np.floor(y), DIGIT_SIZE).astype(np.int64)
    x0 = np.minimum(np.floor(x), DIGIT_SIZE).astype(np.int64)
    fy, fx = (y - y0).astype(np.float32), (x - x0).astype(np.float32)
    top = y0 * (DIGIT_SIZE + 2) + x0
    bottom = top + DIGIT_SIZE + 2

    def at(index: np.ndarray) -> np.ndarray:
        return np.take_along_axis(flat, index, axis=1)

    out = ((at(top) * (1 - fx) + at(top + 1) * fx) * (1 - fy)
           + (at(bottom) * (1 - fx) + at(bottom + 1) * fx) * fy)
    return out.reshape(n, DIGIT_SIZE, DIGIT_SIZE)


def _enhance(images: np.ndarray, s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Step 4: Pillow's ImageEnhance.Contrast, then Brightness: blends with the mean grey level
    (rounded), then with black; Pillow truncates and clips to 0..255 after each blend."""
    n = len(images)
    contrast = (1 + rng.uniform(-0.15, 0.15, n) * s / 3)[:, None, None]
    brightness = (1 + rng.uniform(-0.15, 0.15, n) * s / 3)[:, None, None]
    mean = np.floor(images.mean(axis=(1, 2)) + 0.5)[:, None, None]
    images = np.clip(np.floor(mean + contrast * (images - mean)), 0, 255)
    return np.clip(np.floor(brightness * images), 0, 255)


def _blur_matrices(radius: np.ndarray) -> np.ndarray:
    """(n, 28, 28) matrices K with K @ img @ K.T = a Gaussian blur of std ``radius`` per image,
    edges extended (as Pillow's blur does); radius 0 gives the identity."""
    offsets = np.arange(-_MAX_BLUR_REACH, _MAX_BLUR_REACH + 1)
    sigma = np.maximum(radius, 1e-3)[:, None]
    weights = np.exp(-0.5 * (offsets[None] / sigma) ** 2)
    weights /= weights.sum(axis=1, keepdims=True)
    # shift[o, i, j] = 1 when output row i reads input row clamp(i + o): edge extension.
    rows = np.arange(DIGIT_SIZE)
    shift = np.zeros((len(offsets), DIGIT_SIZE, DIGIT_SIZE), np.float32)
    for k, o in enumerate(offsets):
        np.add.at(shift[k], (rows, np.clip(rows + o, 0, DIGIT_SIZE - 1)), 1.0)
    return np.einsum("no,oij->nij", weights.astype(np.float32), shift)


def _line_mask(s: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Step 7: one black line between two random pixels, ``U{1..max(1, s // 2)}`` wide."""
    n = len(s)
    present = (s >= 3) & (rng.random(n) < 0.35 + 0.05 * s)
    p0, p1 = rng.integers(0, DIGIT_SIZE, (2, n, 2)).astype(np.float32)  # (y, x) end points
    width = _uniform_int(rng, 1, np.maximum(1, np.floor(s / 2)).astype(np.int64), n)
    d = p1 - p0
    length2 = np.maximum((d ** 2).sum(1), 1e-6)
    yy, xx = np.mgrid[0:DIGIT_SIZE, 0:DIGIT_SIZE].astype(np.float32)
    py = yy[None] - p0[:, 0, None, None]
    px = xx[None] - p0[:, 1, None, None]
    t = np.clip((py * d[:, 0, None, None] + px * d[:, 1, None, None]) / length2[:, None, None], 0, 1)
    dist = np.hypot(py - t * d[:, 0, None, None], px - t * d[:, 1, None, None])
    # A 1-px line sets one pixel per step along its major axis (Bresenham): half a pixel measured
    # along the minor axis; wider lines are drawn as polygons of that width.
    major = np.maximum(np.abs(d).max(1), 1e-6) / np.sqrt(length2)
    reach = np.where(width == 1, 0.5 * major, width / 2)
    return present[:, None, None] & (dist <= reach[:, None, None] + 1e-6)


def sample_rectangles(s: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Step 8's rectangles: ``s // 2`` per digit, sides ``U{2..2 + 3 s}``, inside the image.

    Returns ``boxes`` (n, k, 4) as (x0, y0, w, h) and ``active`` (n, k), k the largest count.
    """
    n = len(s)
    count = np.floor(s / 2).astype(np.int64)
    k_max = int(count.max(initial=0))
    longest = np.floor(2 + 3 * s).astype(np.int64)
    boxes = np.zeros((n, k_max, 4), np.int64)
    for k in range(k_max):
        w, h = _uniform_int(rng, 2, longest, n), _uniform_int(rng, 2, longest, n)
        boxes[:, k] = np.stack([_uniform_int(rng, 0, np.maximum(DIGIT_SIZE - w, 0), n),
                                _uniform_int(rng, 0, np.maximum(DIGIT_SIZE - h, 0), n), w, h], axis=1)
    return boxes, count[:, None] > np.arange(k_max)[None]


def rectangle_mask(boxes: np.ndarray, active: np.ndarray) -> np.ndarray:
    """(n, 28, 28) True where a rectangle covers a pixel; filled edge-inclusive, as Pillow's
    ``rectangle([x0, y0, x0 + w, y0 + h])``: each covers (w + 1) x (h + 1) pixels, clipped to the image."""
    r = np.arange(DIGIT_SIZE)
    x0, y0, w, h = (boxes[..., i, None] for i in range(4))
    rows = (r >= y0) & (r <= y0 + h) & active[..., None]  # (n, k, 28)
    cols = (r >= x0) & (r <= x0 + w)
    return (rows[..., :, None] & cols[..., None, :]).any(axis=1)


def corrupt_digits(digits: np.ndarray, rng: np.random.Generator, severity: float | np.ndarray = 6.0) -> np.ndarray:
    """Corrupt a batch of clean digits (N, 28, 28), uint8 or float in [0, 255]; returns uint8.

    ``severity`` is a scalar or one value per digit, on the course's 0-10 scale.
    """
    return corrupt_digits_and_clean(digits, rng, severity)[0]


def corrupt_digits_and_clean(digits: np.ndarray, rng: np.random.Generator,
                             severity: float | np.ndarray = 6.0) -> tuple[np.ndarray, np.ndarray]:
    """``corrupt_digits``, and beside each corrupted digit the clean one behind it: the same scale, rotation
    and crop (steps 1-3), none of the rest (contrast, noise, blur, line, rectangles). Both uint8 (N, 28, 28).

    Training alone uses the clean digit (privileged information: the test never has it). The random draws are
    those of ``corrupt_digits``, so the corrupted digits are the same with or without it.
    """
    images = np.asarray(digits, dtype=np.float32)
    n = len(images)
    s = np.broadcast_to(np.asarray(severity, dtype=np.float64), (n,)).astype(np.float32)

    images = np.rint(_geometry(images, s, rng))
    clean = np.clip(images, 0, 255).astype(np.uint8)
    images = _enhance(images, s, rng)
    noise = rng.standard_normal((n, DIGIT_SIZE, DIGIT_SIZE), dtype=np.float32) * (3 * s)[:, None, None]
    images = np.floor(np.clip(images + noise, 0, 255))
    blur = _blur_matrices(np.where(s >= 3, 0.2 * s, 0.0))
    images = np.rint(blur @ images @ blur.transpose(0, 2, 1))
    out = np.clip(images, 0, 255).astype(np.uint8)
    out[_line_mask(s, rng) | rectangle_mask(*sample_rectangles(s, rng))] = 0
    return out, clean
