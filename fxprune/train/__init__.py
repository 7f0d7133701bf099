"""Training harness: fine-tuning after pruning and the training loops of learned pruning methods.

>>> import torch
>>> from fxprune.train import Trainer, TrainConfig, evaluate
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.randn(32, 4, generator=g); y = (x[:, 1] > 0).long()
>>> data = [(x[:16], y[:16]), (x[16:], y[16:])]
>>> history = Trainer(torch.nn.Linear(4, 2), TrainConfig(epochs=2, progress=False), data, data).fit()
>>> len(history.records), history.best_acc() is not None
(2, True)

Multi-GPU: launch the same script with ``torchrun --nproc_per_node=N`` and call `init_from_env()`
first; `Trainer` then trains with DistributedDataParallel (see fxprune.train.distributed).
"""
from .config import Finetune, TrainConfig
from .distributed import DistInfo, init_from_env
from .evaluate import evaluate
from .history import EpochRecord, TrainHistory
from .optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_scheduler
from .runtime import reinitialise, seed_everything
from .trainer import Trainer

__all__ = [
    "DistInfo", "EpochRecord", "Finetune", "OPTIMIZERS", "SCHEDULES", "TrainConfig", "TrainHistory", "Trainer",
    "evaluate", "init_from_env", "make_optimizer", "make_scheduler", "reinitialise", "seed_everything",
]
