"""`NetworkConfig`: the size of the network and of its input (the `network` section of `RunConfig`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

from meta_drn_tf.settings import Settings, setting


@dataclasses.dataclass(frozen=True)
class NetworkConfig(Settings):
    """What `network.model.build_meta_drn` builds."""

    image_size: int = setting(224, "Input height and width (multiple of 4).")
    width: float = setting(1.0, "Filter-count multiplier; 1.0 is the paper's network.", minimum="positive")

    def _rules(self) -> Iterator[tuple[str, str]]:
        if self.image_size < 4 or self.image_size % 4:
            yield "image_size", "must be a positive multiple of 4 (two stride-2 stages, then x4 upsampling)"
