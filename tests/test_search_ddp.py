"""Distributed searches (torchrun, 2 CPU processes, gloo): every learned method ends with the same plan and
the same slim model on both ranks, equal to one process searching on the same global batches."""
from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker():
    spec = importlib.util.spec_from_file_location("search_ddp_worker", HERE / "search_ddp_worker.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_every_learned_method_searches_the_same_on_two_ranks_as_on_one(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    for _ in range(2):  # a second try if another process took the free port in between
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr", "127.0.0.1",
               "--master_port", str(_free_port()), str(HERE / "search_ddp_worker.py"), str(tmp_path)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        if "address already in use" not in (proc.stdout + proc.stderr).lower():
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    single = _worker().run_all()
    for method, ref in single.items():
        a, b = r0["methods"][method], r1["methods"][method]
        assert a["keep"] == b["keep"] == ref["keep"], method
        assert any(len(k) < 16 for k in ref["keep"]), method  # something was pruned
        for k, v in ref["state"].items():
            assert torch.equal(a["state"][k], b["state"][k]), (method, k)
            torch.testing.assert_close(a["state"][k], v, atol=1e-4, rtol=1e-4, msg=f"{method} {k}")
