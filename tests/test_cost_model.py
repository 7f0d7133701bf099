"""The cost model against torch's flop counter: for a random keep decision, the FLOPs the cost model predicts
are the FLOPs counted on the slim model -- including attention modules whose FLOPs come from several
differently-pruned dimensions (nn.MultiheadAttention, torchvision's window attention)."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer
from torchvision.models.vision_transformer import VisionTransformer

import fxprune
from fxprune.stages import prepare
from fxprune.cost.model import CostModel
from fxprune.analysis.keep import Survivors
from fxprune.selection.select import repair
from fxprune.zoo import resnet20


def _vit() -> nn.Module:
    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=128,
                             num_classes=10)


def _vit_seq_first() -> nn.Module:
    class Encoder(nn.Module):  # sequence-first attention with a longer key sequence than the query
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 32)
            self.attn = nn.MultiheadAttention(32, 4)
            self.out = nn.Linear(32, 5)

        def forward(self, x):
            h = self.inp(x)
            return self.out(self.attn(h[:3], h, h, need_weights=False)[0])

    return Encoder()


def _swin() -> nn.Module:
    return SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4],
                           num_classes=10)


MODELS = {"resnet20": (resnet20, (1, 3, 32, 32)), "vit": (_vit, (2, 3, 32, 32)),
          "mha-seq-first": (_vit_seq_first, (7, 2, 8)), "swin": (_swin, (1, 3, 32, 32))}


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("seed, ratio", [(0, 0.4), (1, 0.7)])
def test_predicted_flops_are_the_slim_models_counted_flops(name, seed, ratio):
    build, shape = MODELS[name]
    torch.manual_seed(seed)
    model, x = build().eval(), torch.randn(shape)
    res = fxprune.prune(model, x, method="random", ratio=ratio, seed=seed)
    ga = prepare(model, x)
    gm = ga.gm
    keep = repair(ga, {d.id: d.keep for d in res.plan.groups}, {})
    predicted = CostModel.build(gm, ga).flops(Survivors(ga, keep))
    assert res.report.flops_after < res.report.flops_before
    assert predicted == pytest.approx(res.report.flops_after, rel=1e-4)
