"""The data protocol of the GffMerge code: per-system frame sampling and a hash split.

Sampling: each system contributes up to ``max_frames`` (1250) frames. If it has more, they are
drawn without replacement by ``numpy.random.default_rng(seed).choice`` (seed 42) and then put
back in stored order; if it has no more, all frames are used in stored order.

Split: frame ``k`` of system ``s`` gets the number

    p = int.from_bytes(blake2b(f"{seed}:{s}:{k}".encode(), digest_size=8).digest(), "big") / 2**64

and goes to ``test`` if p < 0.1, ``val`` if p < 0.2, else ``train``. The key depends only on the
system name and the frame's index in its source file, so a frame lands in the same split
whether its system is loaded alone or combined with others.

Empty splits are repaired per system (so the combined dataset is still exactly the union of the
individual ones): for each empty split, in the order test, val, train, the frame whose p is
closest to that split's interval moves in, taken only from a split holding at least two
frames (ties go to the lower frame index). A system with fewer than three frames therefore
keeps some split empty.
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b

import numpy as np

SPLITS = ("train", "val", "test")
TEST_FRACTION = 0.1
VAL_FRACTION = 0.1
DEFAULT_SEED = 42
DEFAULT_MAX_FRAMES = 1250

# [low, high) interval of p for each split
_INTERVALS = {
    "test": (0.0, TEST_FRACTION),
    "val": (TEST_FRACTION, TEST_FRACTION + VAL_FRACTION),
    "train": (TEST_FRACTION + VAL_FRACTION, 1.0),
}


def sample_frames(n_frames: int, max_frames: int | None = DEFAULT_MAX_FRAMES,
                  seed: int = DEFAULT_SEED) -> np.ndarray:
    """[min(n_frames, max_frames)] int64 frame indices, ascending (``None``: all frames)."""
    if max_frames is None or n_frames <= max_frames:
        return np.arange(n_frames, dtype=np.int64)
    if max_frames < 0:
        raise ValueError(f"max_frames must be >= 0 or None, got {max_frames}")
    chosen = np.random.default_rng(seed).choice(n_frames, size=max_frames, replace=False)
    return np.sort(chosen).astype(np.int64)


def split_fraction(system: str, frame_index: int, seed: int = DEFAULT_SEED) -> float:
    """The hash number p in [0, 1) of frame ``frame_index`` of ``system``."""
    digest = blake2b(f"{seed}:{system}:{int(frame_index)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def _split_of_p(p: float) -> str:
    if p < TEST_FRACTION:
        return "test"
    if p < TEST_FRACTION + VAL_FRACTION:
        return "val"
    return "train"


def split_of(system: str, frame_index: int, seed: int = DEFAULT_SEED) -> str:
    """``"train"``, ``"val"`` or ``"test"`` for one frame, before any empty-split repair."""
    return _split_of_p(split_fraction(system, frame_index, seed))


def assign_splits(system: str, frame_indices: Sequence[int],
                  seed: int = DEFAULT_SEED) -> np.ndarray:
    """Split name (``<U5`` array) of each of ``frame_indices`` of ``system``, with repair."""
    indices = np.asarray(frame_indices, dtype=np.int64)
    p = np.array([split_fraction(system, k, seed) for k in indices], dtype=np.float64)
    names = np.array([_split_of_p(x) for x in p], dtype="<U5")
    for target in ("test", "val", "train"):
        if (names == target).any():
            continue
        counts = {s: int((names == s).sum()) for s in SPLITS}
        donors = np.flatnonzero([counts[s] >= 2 for s in names])
        if donors.size == 0:
            continue
        low, high = _INTERVALS[target]
        distance = np.maximum(low - p[donors], 0.0) + np.maximum(p[donors] - high, 0.0)
        best = donors[np.lexsort((indices[donors], distance))[0]]
        names[best] = target
    return names
