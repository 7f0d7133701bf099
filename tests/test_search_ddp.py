"""Distributed searches (torchrun, 2 CPU processes, gloo): every learned method ends with the same plan and
the same slim model on both ranks, equal to one process searching on the same global batches."""
from __future__ import annotations

from pathlib import Path

import torch

from helpers import load_module, torchrun

HERE = Path(__file__).resolve().parent


def test_every_learned_method_searches_the_same_on_two_ranks_as_on_one(tmp_path):
    torchrun(HERE / "search_ddp_worker.py", tmp_path)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    single = load_module(HERE / "search_ddp_worker.py", "search_ddp_worker").run_all()
    for method, ref in single.items():
        a, b = r0["methods"][method], r1["methods"][method]
        assert a["keep"] == b["keep"] == ref["keep"], method
        assert any(len(k) < 16 for k in ref["keep"]), method  # something was pruned
        for k, v in ref["state"].items():
            assert torch.equal(a["state"][k], b["state"][k]), (method, k)
            torch.testing.assert_close(a["state"][k], v, atol=1e-4, rtol=1e-4, msg=f"{method} {k}")
