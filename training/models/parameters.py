"""``python -m training.models.parameters --preset sd15``: a preset's parameter counts beside the reference numbers.

The model is built on the meta device, so nothing is allocated; ``--config`` also prints the preset's config.
"""
from __future__ import annotations

import argparse
import json

import torch

from runtime.cli import run_cli
from training.models.diad import build_model
from training.models.presets import PRESETS, REFERENCE_PARAMETERS_M, format_parameter_table, get_preset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m training.models.parameters",
                                     description="Print a preset's config and parameter counts (meta device).")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="sd15", help="model preset (default: sd15)")
    parser.add_argument("--config", action="store_true", help="also print the config as JSON (default: off)")
    args = parser.parse_args(argv)
    config = get_preset(args.preset)
    placeholder = torch.empty(config.unet.context_length, config.unet.cross_attention_dim, device="meta")
    model = build_model(config, device="meta", context=placeholder)
    if args.config:
        print(json.dumps(config.to_dict(), indent=2))
    print(format_parameter_table(model.parameter_counts(), REFERENCE_PARAMETERS_M if args.preset == "sd15" else None))


if __name__ == "__main__":
    run_cli(main)
