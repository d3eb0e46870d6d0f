"""Wall time and peak memory of ``runtime.metrics.compute`` on MVTec-AD-sized synthetic data.

    python -m benchmarks.metrics_bench [--n 1725] [--size 256] [--seed 0]

Maps are smooth random fields plus a blurred response on the defects; about half of the images get a few
elliptic defect blobs, and an image is anomalous when its mask has one. The data are written image by image
into preallocated arrays, so the process's RSS high-water mark before the timed call is (close to) its
current RSS, and the peak RSS after the call minus the RSS before it is the call's peak extra memory.
"""
from __future__ import annotations

import argparse
import time

import cv2
import numpy as np

from benchmarks.memory import status_mib
from runtime import metrics
from runtime.cli import run_cli


def smooth_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """A smooth float32 random field: coarse bicubic-upsampled noise plus finer blurred noise."""
    coarse = cv2.resize(rng.standard_normal((8, 8), np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    fine = cv2.GaussianBlur(rng.standard_normal((size, size), np.float32), (0, 0), size / 128)
    return 0.5 * coarse + 0.5 * fine


def draw_defects(rng: np.random.Generator, mask: np.ndarray) -> None:
    """Draw one to three filled ellipses of value 1 into the uint8 ``mask`` in place."""
    size = mask.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        center = tuple(int(c) for c in rng.integers(0, size, 2))
        axes = tuple(int(a) for a in rng.integers(1, max(size // 6, 2), 2))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)


def synthetic_data(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(image_scores, image_labels, maps, masks)`` with maps ``(n, size, size)`` float32, masks uint8."""
    rng = np.random.default_rng(seed)
    maps = np.empty((n, size, size), np.float32)
    masks = np.zeros((n, size, size), np.uint8)
    for score_map, mask in zip(maps, masks):
        score_map[:] = smooth_field(rng, size)
        if rng.random() < 0.5:
            draw_defects(rng, mask)
            score_map += cv2.GaussianBlur(mask.astype(np.float32), (0, 0), size / 64) * rng.uniform(0.5, 2.0)
    image_labels = masks.reshape(n, -1).max(axis=1) > 0
    image_scores = maps.reshape(n, -1).max(axis=1)
    return image_scores, image_labels, maps, masks


def measure(n: int = 1725, size: int = 256, seed: int = 0) -> dict:
    """Generate the data, run ``metrics.compute`` once on it and return its figures and metrics."""
    image_scores, image_labels, maps, masks = synthetic_data(n, size, seed)
    rss_before, peak_before = status_mib("VmRSS"), status_mib("VmHWM")
    start = time.perf_counter()
    result = metrics.compute(image_scores, image_labels, maps, masks)
    seconds = time.perf_counter() - start
    peak_after = status_mib("VmHWM")
    return {
        "images": n,
        "size": size,
        "pixels": int(maps.size),
        "defect_pixels": int(np.count_nonzero(masks)),
        "seconds": seconds,
        "rss_before_mb": rss_before,
        "peak_before_mb": peak_before,
        "peak_after_mb": peak_after,
        "peak_increase_mb": peak_after - rss_before,
        "metrics": result,
    }


def report(figures: dict) -> str:
    """The figures as two Markdown tables: cost, then the metric values."""
    cost = (
        "| images | size | pixels | defect pixels | wall time (s) | RSS before (MiB) | peak RSS before (MiB) "
        "| peak RSS after (MiB) | peak increase (MiB) |\n"
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
        f"| {figures['images']} | {figures['size']} | {figures['pixels']:,} | {figures['defect_pixels']:,} "
        f"| {figures['seconds']:.2f} | {figures['rss_before_mb']:.0f} | {figures['peak_before_mb']:.0f} "
        f"| {figures['peak_after_mb']:.0f} | {figures['peak_increase_mb']:.0f} |"
    )
    values = metrics.to_markdown([{"class": "synthetic", **figures["metrics"]}])
    return cost + "\n\n" + values


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1725, help="number of images (MVTec AD test set: 1725)")
    parser.add_argument("--size", type=int, default=256, help="map side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(report(measure(args.n, args.size, args.seed)))


if __name__ == "__main__":
    run_cli(main)
