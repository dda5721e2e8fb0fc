"""Course-like corruption of 28x28 digits, vectorised over a batch.

Each digit goes through: a small random affine warp, a strong Gaussian blur, dimming to a random
peak brightness, a faint blotchy background, then 1-5 solid black rectangles and sometimes a thin
black scratch. Every parameter is a function of a per-digit *severity* (0 = clean MNIST,
6 = the course look, 10 = harsher), so domain randomisation is simply a severity drawn per digit
from a range (see ``sample_severity``), on top of the parameters' own randomness.

Everything is batched numpy because the training loop draws fresh corruptions every epoch:
a per-image scipy filter loop would cost more than the whole vectorised pipeline.
"""

from __future__ import annotations

import numpy as np
from scipy.ndimage import map_coordinates

SIZE = 28
COURSE_SEVERITY = 6.0


def sample_severity(rng: np.random.Generator, n: int, center: float = COURSE_SEVERITY,
                    spread: float = 2.5) -> np.ndarray:
    """Per-digit severities uniform in [center - spread, center + spread], clipped to [0, 10]."""
    return np.clip(rng.uniform(center - spread, center + spread, n), 0.0, 10.0)


def _affine_warp(images: np.ndarray, t: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rotate / scale / shift every image about its centre (bilinear, zero outside)."""
    n = len(images)
    angle = np.deg2rad(rng.uniform(-1, 1, n) * 12.0 * t)
    scale = 1.0 + rng.uniform(-1, 1, n) * 0.12 * t
    shift = rng.uniform(-1, 1, (n, 2)) * 2.0 * t[:, None]
    c = (SIZE - 1) / 2
    yy, xx = np.meshgrid(np.arange(SIZE) - c, np.arange(SIZE) - c, indexing="ij")
    cos, sin = np.cos(angle)[:, None, None] / scale[:, None, None], np.sin(angle)[:, None, None] / scale[:, None, None]
    # Inverse mapping: output pixel -> source coordinate.
    src_y = cos * yy - sin * xx + c - shift[:, 0, None, None]
    src_x = sin * yy + cos * xx + c - shift[:, 1, None, None]
    idx = np.broadcast_to(np.arange(n, dtype=np.float32)[:, None, None], src_y.shape)
    # Treating the batch as a 3-D volume warps every image in one call (the index axis is exact).
    return map_coordinates(images, [idx, src_y, src_x], order=1, mode="constant", cval=0.0)


def _gaussian_blur(images: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Blur each image with its own sigma as K @ img @ K.T (separable, zero padding).

    A batched matrix product handles a different sigma per image in one call, which
    scipy.ndimage.gaussian_filter (one sigma per call) cannot.
    """
    sigma = np.maximum(sigma, 1e-3)[:, None, None]
    offsets = np.arange(SIZE)[:, None] - np.arange(SIZE)[None, :]
    kernel = np.exp(-0.5 * (offsets[None] / sigma) ** 2)
    full = np.exp(-0.5 * (np.arange(-SIZE + 1, SIZE)[None, None, :] / sigma) ** 2).sum(-1, keepdims=True)
    kernel = (kernel / full).astype(np.float32)
    return kernel @ images @ kernel.transpose(0, 2, 1)


def _smooth_field(rng: np.random.Generator, n: int, cells: int = 7) -> np.ndarray:
    """Unit-variance blotchy noise: a coarse random grid upsampled bilinearly to 28x28."""
    coarse = rng.standard_normal((n, cells, cells)).astype(np.float32)
    pos = np.linspace(0, cells - 1, SIZE)
    lo = np.minimum(pos.astype(int), cells - 2)
    w = pos - lo
    up = np.zeros((SIZE, cells), np.float32)
    up[np.arange(SIZE), lo] = 1 - w
    up[np.arange(SIZE), lo + 1] = w
    field = up @ coarse @ up.T
    return field / field.reshape(n, -1).std(axis=1).clip(1e-6)[:, None, None]


def _rectangle_mask(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """1-5 overlapping rectangles per image covering ~42% of it at severity 6 (True = hidden)."""
    n, k_max = len(t), 5
    count = rng.integers(1, k_max + 1, n)
    coverage = np.clip(rng.normal(0.50 * t, 0.08 * np.minimum(t, 1.0)), 0.0, 0.75)
    # Independent placement overlaps: k rectangles of area f cover about 1 - (1 - f)^k.
    area = (1 - (1 - coverage) ** (1 / count))[:, None] * SIZE * SIZE * rng.uniform(0.75, 1.3, (n, k_max))
    aspect = np.exp(rng.uniform(-0.8, 0.8, (n, k_max)))
    h = np.clip(np.sqrt(area * aspect), 1, SIZE)
    w = np.clip(area / h, 1, SIZE)
    # Centres lean toward the middle, where the ink is.
    cy = np.clip(rng.normal(SIZE / 2, 7, (n, k_max)), 0, SIZE)
    cx = np.clip(rng.normal(SIZE / 2, 7, (n, k_max)), 0, SIZE)
    y0, x0 = np.rint(cy - h / 2), np.rint(cx - w / 2)
    y1, x1 = y0 + np.rint(h), x0 + np.rint(w)
    r = np.arange(SIZE)
    rows = (r >= y0[..., None]) & (r < y1[..., None])  # (n, k, 28)
    cols = (r >= x0[..., None]) & (r < x1[..., None])
    active = (np.arange(k_max)[None] < count[:, None]) & (t[:, None] > 0)
    return ((rows[..., :, None] & cols[..., None, :]) & active[..., None, None]).any(axis=1)


def _scratch_mask(rng: np.random.Generator, t: np.ndarray) -> np.ndarray:
    """Occasionally a thin straight black line, 1-2 px wide, through the image."""
    n = len(t)
    present = rng.random(n) < 0.15 * np.minimum(t, 1.5)
    theta = rng.uniform(0, np.pi, n)
    py, px = rng.uniform(4, SIZE - 4, (2, n))
    half_width = np.where(rng.random(n) < 0.5, 0.5, 1.0)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    dist = np.abs((yy[None] - py[:, None, None]) * np.cos(theta)[:, None, None]
                  - (xx[None] - px[:, None, None]) * np.sin(theta)[:, None, None])
    return (dist < half_width[:, None, None]) & present[:, None, None]


def corrupt_digits(digits: np.ndarray, rng: np.random.Generator, severity: float | np.ndarray = 6.0) -> np.ndarray:
    """Corrupt a batch of clean digits (N, 28, 28), uint8 or float in [0, 255]; returns uint8.

    ``severity`` is a scalar or one value per digit, on the course's 0-10 scale.
    """
    images = np.asarray(digits, dtype=np.float32) / 255.0
    n = len(images)
    t = np.broadcast_to(np.asarray(severity, dtype=np.float64), (n,)) / COURSE_SEVERITY

    images = _affine_warp(images, t, rng)
    images = _gaussian_blur(images, rng.uniform(0.8, 1.7, n) * t)
    # Dim: peak brightness has median ~170 (range ~70-240) at severity 6, 255 at severity 0.
    course_peak = np.clip(rng.normal(177, 42, n), 60, 250)
    peak = np.clip(255 - t * (255 - course_peak), 35, 255)
    images *= (peak / images.reshape(n, -1).max(axis=1).clip(1e-6))[:, None, None]
    # Faint blotchy background ~10 +- 6 at severity 6, plus a little per-pixel grain.
    level = rng.uniform(7, 15, n) * t
    background = level[:, None, None] + 6.0 * t[:, None, None] * _smooth_field(rng, n)
    background += 1.5 * t[:, None, None] * rng.standard_normal((n, SIZE, SIZE)).astype(np.float32)
    images = np.clip(images + np.maximum(background, 0), 0, 255)

    out = np.rint(images).astype(np.uint8)
    out[_rectangle_mask(rng, t) | _scratch_mask(rng, t)] = 0
    return out
