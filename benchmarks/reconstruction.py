"""How faithfully a run's autoencoder reconstructs normal images it never trained on.

    python -m benchmarks.reconstruction --run RUN [--data PATH|generic] [--images N]

``--data generic``: held-out generated images (:mod:`training.generic_images`, a seed the base model never
trained on); a dataset folder: its normal test images. Prints the mean PSNR (dB, RGB in [0, 1]) and the mean
feature distance (the scorer's anomaly map, averaged over pixels) of ``decode(encode_mean(x))``, and the standard
deviation of the scaled latents (the VAE's ``scaling_factor`` should bring it near 1, as SD's does for its VAE).
"""
from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

import numpy as np
import torch

from runtime.cli import run_cli
from runtime.preprocess import preprocess
from training import generic_images
from training.data import AnomalyDataset, load_index
from training.evaluate import peak_signal_to_noise
from training.loop import GENERIC
from training.models.scorer import FeatureScorer
from training.run_folder import RunFolder

HELD_OUT_SEED = 1_000_003  # generated images no training run draws (training uses the --seed, 0 by default)


def normal_images(data: str, size: int, count: int) -> torch.Tensor:
    if data == GENERIC:
        stream = generic_images.stream(HELD_OUT_SEED, size)
        return torch.from_numpy(np.stack([preprocess(next(stream), size) for _ in range(count)]))
    samples = [s for s in load_index(data).split("test") if s.label == 0][:count]
    dataset = AnomalyDataset(samples, size)
    return torch.stack([dataset[i]["image"] for i in range(len(dataset))])


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="run folder")
    p.add_argument("--data", default=GENERIC, help=f"'{GENERIC}' or a dataset folder (default: {GENERIC})")
    p.add_argument("--images", type=int, default=256, help="images to reconstruct (default: 256)")
    p.add_argument("--batch-size", type=int, default=16, help="images per batch (default: 16)")
    args = p.parse_args(argv)
    model = RunFolder(args.run).load_model("cpu")
    config = model.config
    scorer = FeatureScorer.from_config(config.scorer, config.image_size)
    images = normal_images(args.data, config.image_size, args.images)
    psnr, distance, latents = [], [], []
    with torch.inference_mode():
        for batch in images.split(args.batch_size):
            latents.append(model.vae.encode_mean(batch))
            recon = model.vae.decode(latents[-1])
            psnr.append(peak_signal_to_noise(batch, recon))
            distance.append(scorer(batch, recon)[0].mean(dim=(1, 2)).numpy())
    result = {"run": args.run, "data": args.data, "images": len(images),
              "psnr_db": round(float(np.concatenate(psnr).mean()), 2),
              "feature_distance": round(float(np.concatenate(distance).mean()), 4),
              "scaled_latent_std": round(float(torch.cat(latents).std()), 3), "scaling_factor": model.vae.scale}
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run_cli(main)
