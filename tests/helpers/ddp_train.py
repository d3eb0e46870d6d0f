"""Run by tests/test_train.py under torchrun: train a few steps, then check every replica holds the same weights."""
import sys

import torch
import torch.distributed as dist

from training.train import parse_args, train

model = train(parse_args(sys.argv[1:]))
flat = torch.cat([p.detach().flatten() for p in model.parameters()]).double()
gathered = [torch.zeros_like(flat) for _ in range(dist.get_world_size())]
dist.all_gather(gathered, flat)
if dist.get_rank() == 0:
    spread = max(float((g - gathered[0]).abs().max()) for g in gathered)
    moved = float(flat.abs().sum())
    print(f"REPLICAS world={len(gathered)} max_abs_difference={spread} checksum={moved}")
dist.destroy_process_group()
