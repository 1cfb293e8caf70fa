"""`ImageBank`: decoded images and masks of a set of classes, held in memory.

Both sources - FSS-1000-layout folders (`fss1000.py`) and the procedural
synthetic dataset (`synthetic.py`) - produce an ImageBank; the episodic
pipelines (`episodes.py`) only read banks. Decoding once into a bank is the
cache: episodes then gather from it with graph-native ops.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass
class ImageBank:
    """Images and binary masks of C classes, padded to N images per class.

    Attributes:
        class_names: C names.
        images: uint8 `(C, N, H, W, 3)` RGB.
        masks: uint8 `(C, N, H, W)` with values {0, 1}.
        counts: int32 `(C,)` number of real images of each class (the rest is padding).
    """

    class_names: list[str]
    images: np.ndarray
    masks: np.ndarray
    counts: np.ndarray

    def __post_init__(self):
        c, n, h, w, _ = self.images.shape
        if self.masks.shape != (c, n, h, w):
            raise ValueError(f"masks shape {self.masks.shape} does not match images {self.images.shape}")
        if len(self.class_names) != c or self.counts.shape != (c,):
            raise ValueError("class_names and counts must have one entry per class")
        self.counts = self.counts.astype(np.int32)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.images.shape[2:4])

    @property
    def nonempty(self) -> np.ndarray:
        """bool `(C, N)`: the image is real and its mask has foreground (may be a support)."""
        real = np.arange(self.images.shape[1])[None, :] < self.counts[:, None]
        return real & (self.masks.reshape(self.masks.shape[:2] + (-1,)).max(-1) > 0)

    def subset(self, names: list[str]) -> ImageBank:
        """The bank restricted to `names`, in that order."""
        index = {n: i for i, n in enumerate(self.class_names)}
        missing = [n for n in names if n not in index]
        if missing:
            raise KeyError(f"classes not in the bank: {missing[:5]}")
        rows = [index[n] for n in names]
        return ImageBank(list(names), self.images[rows], self.masks[rows], self.counts[rows])

    @classmethod
    def from_lists(cls, names: list[str], images: list[np.ndarray], masks: list[np.ndarray]) -> ImageBank:
        """Pads per-class arrays `(n_c, H, W, 3)` / `(n_c, H, W)` into one bank."""
        if not names:
            raise ValueError("no classes to put in the bank")
        n = max(len(x) for x in images)
        h, w = images[0].shape[1:3]
        all_images = np.zeros((len(names), n, h, w, 3), np.uint8)
        all_masks = np.zeros((len(names), n, h, w), np.uint8)
        for i, (x, y) in enumerate(zip(images, masks)):
            all_images[i, : len(x)] = x
            all_masks[i, : len(y)] = y
        counts = np.array([len(x) for x in images], np.int32)
        return cls(list(names), all_images, all_masks, counts)

    @classmethod
    def concatenate(cls, banks: list[ImageBank]) -> ImageBank:
        """The classes of all `banks` (same image size) in one bank."""
        names, images, masks = [], [], []
        for bank in banks:
            for c, n in enumerate(bank.counts):
                names.append(bank.class_names[c])
                images.append(bank.images[c, :n])
                masks.append(bank.masks[c, :n])
        return cls.from_lists(names, images, masks)
