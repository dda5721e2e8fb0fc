"""The input contract: what one digit pair is, for training, export, the run time and the HTTP API.

Every module that needs the shape of a pair imports it from here, and error messages are built from
these values, so the shape is written down once.

- A pair is ``PAIR_SHAPE`` = (28, 56): two ``DIGIT_SIZE`` x ``DIGIT_SIZE`` digits side by side, the left
  digit in columns ``0 .. DIGIT_SIZE - 1``, the right one in the columns after it.
- Pixels are ``PIXEL_DTYPE`` (uint8, 0-255), light ink on black, as MNIST and the course files have them.
- The dtype rule, for arrays that are not uint8 (``ensemble.course_data.as_pairs_uint8`` applies it): a
  float array whose values all lie in [0, 1] is scaled by 255, one in [0, 255] is taken as pixel values,
  both rounded; NaN, infinity, values outside [0, 255] and other dtypes are refused.
- A batch of pairs is (N, 28, 56); models see it scaled to [0, 1] as float32.

numpy only: this module is imported by the torch side and the torch-free side alike.
"""

from __future__ import annotations

import numpy as np

DIGIT_SIZE = 28  # one MNIST digit is DIGIT_SIZE x DIGIT_SIZE pixels
PAIR_SHAPE: tuple[int, int] = (DIGIT_SIZE, 2 * DIGIT_SIZE)  # (height, width) of one pair
PIXEL_DTYPE = np.dtype(np.uint8)
PIXEL_MAX = 255  # uint8 pixels are scaled by 1 / PIXEL_MAX before any model sees them

#: How messages and documents write the shapes: "(28, 56)" and "(N, 28, 56)".
PAIR_SHAPE_TEXT = f"({PAIR_SHAPE[0]}, {PAIR_SHAPE[1]})"
PAIRS_SHAPE_TEXT = f"(N, {PAIR_SHAPE[0]}, {PAIR_SHAPE[1]})"


def split_pair(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 28, 56) pairs -> their left and right (..., 28, 28) digits (views, no copy)."""
    return pairs[..., :DIGIT_SIZE], pairs[..., DIGIT_SIZE:]


def join_pair(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Two (..., 28, 28) digits -> one (..., 28, 56) pair, left digit first."""
    return np.concatenate([left, right], axis=-1)
