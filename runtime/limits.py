"""What one frame may cost: limits a plant sets on image files and frames, with safe defaults.

They apply wherever frames enter: an image file's size is checked before it is read and its pixel count from its
header before it is decoded; camera and video frames and the arrays given to ``Detector.predict`` are checked as
they arrive. A frame over a limit raises :class:`LimitError` naming the limit and how to raise it; the stream
turns it into an error record and goes on. With the defaults one decoded frame holds at most 75 MB (25 MP RGB).
"""
from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, fields

from runtime.errors import LimitError

MIB = 1 << 20


@dataclass(frozen=True)
class Limits:
    """``max_pixels``: width x height of one frame; ``max_side``: its longer side; ``max_file_bytes``: one image
    file. The defaults fit a 20 MP industrial camera and a 16k line-scan camera."""

    max_pixels: int = 25_000_000
    max_side: int = 16_384
    max_file_bytes: int = 256 * MIB

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"Limits.{f.name} must be a positive integer, got {value!r}")

    def check_frame(self, width: int, height: int, what: str) -> None:
        """Raise :class:`LimitError` naming ``what`` when a ``width`` x ``height`` frame is over a limit."""
        if width * height > self.max_pixels:
            raise LimitError(
                f"{what}: {width} x {height} = {width * height:,} pixels, over the limit of {self.max_pixels:,} "
                "(raise it with --max-pixels or Limits(max_pixels=...))"
            )
        if max(width, height) > self.max_side:
            raise LimitError(
                f"{what}: {width} x {height}, a side over the limit of {self.max_side} pixels (raise it with "
                "--max-side or Limits(max_side=...))"
            )

    def check_file(self, size: int, what: str) -> None:
        """Raise :class:`LimitError` naming ``what`` when a file of ``size`` bytes is over the limit."""
        if size > self.max_file_bytes:
            raise LimitError(
                f"{what}: {size:,} bytes, over the file size limit of {self.max_file_bytes:,} bytes "
                f"({self.max_file_bytes / MIB:g} MiB; raise it with --max-file-mb or Limits(max_file_bytes=...))"
            )

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        """The command-line flags of the limits (read back with :meth:`from_args`)."""
        group = parser.add_argument_group("limits (a frame over one is an error record)")
        group.add_argument("--max-pixels", type=_positive(float), default=Limits.max_pixels,
                           help=f"largest frame in pixels, width x height (default {Limits.max_pixels:.3g})")
        group.add_argument("--max-side", type=_positive(int), default=Limits.max_side,
                           help=f"longest frame side in pixels (default {Limits.max_side})")
        group.add_argument("--max-file-mb", type=_positive(float), default=Limits.max_file_bytes / MIB,
                           help=f"largest image file in MiB (default {Limits.max_file_bytes // MIB})")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Limits:
        return cls(int(args.max_pixels), args.max_side, int(args.max_file_mb * MIB))


def _positive(kind: type) -> Callable[[str], float]:
    """An argparse type: a number of ``kind`` (``25e6`` is fine for a float) that is at least 1."""

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not value >= 1 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected a finite number of at least 1, got {text!r}")
        return value

    return parse
