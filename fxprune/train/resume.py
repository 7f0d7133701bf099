"""Continuing a run from ``checkpoint_dir/last.pt``."""
from __future__ import annotations

from pathlib import Path

from fxprune.train.checkpoint import load_checkpoint, set_rng_state
from fxprune.train.history import TrainHistory
from fxprune.train.loop import Run


def resume_state(run: Run, path: Path | None, total_steps: int | None) -> tuple[int, TrainHistory]:
    """Load `path` into the run when resuming is on and the file exists: returns (first epoch to train,
    history so far); (0, empty history) otherwise. RNG states are restored last, so the resumed run
    draws the same random numbers as an uninterrupted one."""
    if path is None or not run.config.resume or not path.exists():
        return 0, TrainHistory()
    ckpt = load_checkpoint(path)
    if ckpt.get("total_steps") != total_steps:
        raise ValueError(
            f"the checkpoint {str(path)!r} is from a run of {ckpt.get('total_steps')} steps, but this run has "
            f"{total_steps} (epochs, max_steps or the data changed), so its lr schedule would not continue. "
            f"Use the same settings, a new checkpoint_dir, or resume=False to start over.")
    try:
        run.model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise ValueError(f"the checkpoint {str(path)!r} holds the weights of a different model ({e}). "
                         f"Use a new checkpoint_dir, or resume=False to start over.") from e
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.scheduler.load_state_dict(ckpt["scheduler"])
    if ckpt["scaler"] and run.scaler.is_enabled():  # empty when saved without fp16 (e.g. on the CPU)
        run.scaler.load_state_dict(ckpt["scaler"])
    run.step = int(ckpt["step"])
    set_rng_state(ckpt["rng"], run.device)
    return int(ckpt["epoch"]) + 1, TrainHistory.from_dict(ckpt["history"])
