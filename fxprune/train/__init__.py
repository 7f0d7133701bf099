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
from fxprune.train.config import Finetune, TrainConfig
from fxprune.train.distributed import DistInfo, init_from_env
from fxprune.train.evaluate import evaluate
from fxprune.train.history import EpochRecord, TrainHistory
from fxprune.train.optim import OPTIMIZERS, SCHEDULES, make_optimizer, make_scheduler
from fxprune.train.runtime import reinitialise, seed_everything
from fxprune.train.trainer import Trainer

__all__ = [
    "DistInfo", "EpochRecord", "Finetune", "OPTIMIZERS", "SCHEDULES", "TrainConfig", "TrainHistory", "Trainer",
    "evaluate", "init_from_env", "make_optimizer", "make_scheduler", "reinitialise", "seed_everything",
]
