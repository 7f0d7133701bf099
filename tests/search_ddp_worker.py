"""Worker for tests/test_search_ddp.py: ``torchrun --nproc_per_node=2 search_ddp_worker.py OUT_DIR``.

Each rank prunes the same small conv net (no BatchNorm, so that equal shards of a batch give exactly the
full batch's gradients) with every learned method on its shard of synthetic data (gloo, CPU) and writes the
plan's kept channels and the slim model's state to OUT_DIR/rank<R>.pt. The test imports `run_all` to make
the single-process reference.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ddp_train_worker import ShardLoader  # noqa: E402

OPTIONS = {
    "tas": dict(tas_epochs=2, tas_progress=False, tas_depth=False),
    "jst": dict(jst_coarse_epochs=1, jst_search_epochs=1, jst_train_batches=2, jst_val_batches=1, jst_samples=2,
                jst_candidates=2, jst_calib_batches=1, jst_eval_batches=2),
    "metapruning": dict(metapruning_population=6, metapruning_parents=2, metapruning_mutations=3,
                        metapruning_crossovers=3, metapruning_iterations=2, metapruning_calib_batches=1,
                        metapruning_val_batches=2),
    "dcp": dict(dcp_heads=1, dcp_batches=2, dcp_head_epochs=1, dcp_chunk=2, dcp_steps=1),
}


def build() -> tuple[nn.Module, ShardLoader, torch.Tensor]:
    g = torch.Generator().manual_seed(11)
    y = torch.randint(0, 4, (96,), generator=g)
    x = torch.randn(96, 3, 8, 8, generator=g) + torch.randn(4, 3, 1, 1, generator=g)[y]
    torch.manual_seed(5)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(16, 4))
    return model.eval(), ShardLoader(x, y, 16, shuffle=True), x[:2]


def run_all() -> dict:
    import fxprune

    out = {}
    for method, options in OPTIONS.items():
        model, data, x = build()
        res = fxprune.prune(model, x, method=method, flops=0.5, data=data, device="cpu", progress=False, **options)
        out[method] = {"keep": [d.keep for d in res.plan.groups],
                       "state": {k: v.detach().clone() for k, v in res.model.state_dict().items()}}
    return out


def main(out_dir: str) -> None:
    from fxprune.train import distributed

    info = distributed.init_from_env()
    try:
        torch.save({"world_size": info.world_size, "methods": run_all()}, Path(out_dir) / f"rank{info.rank}.pt")
    finally:
        distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
