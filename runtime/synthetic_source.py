"""The synthetic conveyor as a frame source (``--source synthetic``): the demo's generator, imported only when a
synthetic source is opened, so the product runtime does not load it."""
from __future__ import annotations

from collections.abc import Iterator

from runtime.files import GOOD
from runtime.frames import Frame, Source
from runtime.synthetic import conveyor


class SyntheticSource(Source):
    """The endless synthetic conveyor of :mod:`runtime.synthetic`, with ground truth, reproducible per seed."""

    def __init__(self, seed: int = 0, defect_rate: float = 0.3, size: int = 256, max_fps: float | None = None):
        super().__init__("synthetic", max_fps)
        self.seed, self.defect_rate, self.size = seed, defect_rate, size

    def _frames(self) -> Iterator[Frame]:
        for rgb, mask, class_name, defect in conveyor(self.seed, self.defect_rate, self.size):
            yield self._make(image=rgb, mask=mask, label=int(defect != GOOD), class_name=class_name, defect=defect)
