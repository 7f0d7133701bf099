"""JST's two training stages on a gated copy of the model (fxprune.methods.search.gates).

Coarse training: the whole network, every channel scaled by n x softmax(alpha), weights (SGD, Nesterov
momentum, one cosine schedule over both stages) and alphas (Adam) trained together on
cross-entropy + lambda x sum_g ||alpha_g||_2.

Search-and-training: repeatedly, ThresNet draws per-group thresholds, the sampler turns them into a sub-network
(scaled into the budget when it costs more), the sub-network's weights train on `train_batches` batches of the
training split and its alphas on `val_batches` batches of the validation split (the updates land in the full
network: the gated copy *is* the full network, the gates zero the rest), and the sub-network's reward
-(validation loss + gamma x cost / dense cost) is recorded for ThresNet. ThresNet takes a REINFORCE step
every `samples` sub-networks (the paper's T; 30 on CIFAR) and at the end of every epoch. The best-rewarded
sub-networks are kept as the final candidates.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import islice

import torch
import torch.fx as fx
import torch.nn.functional as F
from tqdm.auto import tqdm

from fxprune.analysis.keep import Keep
from fxprune.train.losses import logits_of
from fxprune.methods.search.budget_fit import shrink_to_fit
from fxprune.methods.calibration import batches_per_epoch
from fxprune.methods.search.gates import ChannelGates
from fxprune.methods.jst.space import ChannelWeights
from fxprune.methods.search.dist import average_gradients, mean_over_ranks
from fxprune.methods.search.checkpoint import SearchCheckpoint
from fxprune.methods.jst.thresnet import Reinforce, ThresNet



@dataclass
class JSTConfig:
    coarse_epochs: int = 1
    search_epochs: int = 1
    batches: int | None = None  # per epoch (None: the whole data iterable)
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    arch_lr: float = 1e-3
    penalty: float = 1e-3  # lambda of the coarse loss (and of the alpha updates of the search)
    noise: float = 0.1  # standard deviation of the sampler's perturbation of alpha
    train_batches: int = 10  # M: weight batches per sampled sub-network
    val_batches: int = 2  # N: alpha batches per sampled sub-network
    samples: int = 30  # T: sub-networks per ThresNet update
    gamma: float = 0.1  # cost weight of the reward
    thres_lr: float = 1e-3
    thres_std: float = 0.05
    thres_low: float = 0.05
    thres_hidden: int = 128
    candidates: int = 10
    progress: bool = True


class JSTSearch:
    """Both stages, resumable after every epoch (coarse and search epochs are counted together)."""

    def __init__(self, gated: fx.GraphModule, gates: ChannelGates, space: ChannelWeights, cfg: JSTConfig,
                 data: Iterable, val_data: Iterable | None, measure: Callable[[Keep], float], dense: float,
                 target: float, generator: torch.Generator, checkpoint: SearchCheckpoint) -> None:
        self.gated, self.gates, self.space, self.cfg = gated, gates, space, cfg
        self.data, self.val_data, self.measure, self.dense, self.target = data, val_data, measure, dense, target
        self.generator, self.checkpoint = generator, checkpoint
        self.per_epoch = batches_per_epoch(data, cfg.batches, "jst", "jst_batches")
        per_sample = cfg.train_batches + (cfg.val_batches if val_data is None else 0)
        if self.per_epoch < per_sample:
            raise ValueError(f"method 'jst' trains each sampled sub-network on jst_train_batches="
                             f"{cfg.train_batches} + jst_val_batches={cfg.val_batches} batches, but an epoch has "
                             f"only {self.per_epoch}: lower them, or pass more data (or jst_val_data).")
        self.samples_per_epoch = self.per_epoch // per_sample
        self.weights = [p for p in gated.parameters() if p.requires_grad]
        self.w_opt = torch.optim.SGD(self.weights, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                                     nesterov=cfg.momentum > 0)
        self.a_opt = torch.optim.Adam(space.parameters(), lr=cfg.arch_lr, betas=(0.5, 0.999))
        steps = cfg.coarse_epochs * self.per_epoch + cfg.search_epochs * self.samples_per_epoch * cfg.train_batches
        self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.w_opt, T_max=max(steps, 1))
        sizes = [space.ga.groups[g].size for g in space.gids]
        self.thresnet = ThresNet(sizes, hidden=cfg.thres_hidden, low=cfg.thres_low, std=cfg.thres_std)
        self.thresnet.to(next(iter(space.parameters())).device)
        self.policy = Reinforce(self.thresnet, cfg.thres_lr)
        self.log: list[dict] = []
        self.candidates: list[dict] = []  # {"reward", "cost", "keep": [[gid, channels]]}, best first
        self.epoch = 0

    # ------------------------------------------------------------------ driver
    def run(self) -> None:
        self._resume()
        total = self.cfg.coarse_epochs + self.cfg.search_epochs
        bar = tqdm(total=total, initial=self.epoch, desc="jst", unit="epoch", leave=False,
                   disable=not self.cfg.progress)
        self.gated.train()
        for epoch in range(self.epoch, total):
            if hasattr(self.data, "set_epoch"):
                self.data.set_epoch(epoch)  # the same batches whether or not the search was resumed
            if epoch < self.cfg.coarse_epochs:
                self.log.append(self._coarse_epoch(epoch))
            else:
                if epoch == self.cfg.coarse_epochs:
                    self.thresnet.set_mean(self.uniform_threshold())
                self.log.append(self._search_epoch(epoch))
            self.epoch = epoch + 1
            self._save()
            bar.update(1)
        bar.close()

    def _batches(self) -> Iterator:
        device = next(iter(self.space.parameters())).device
        for x, y in islice(iter(self.data), self.per_epoch):
            yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)

    def _val_stream(self, train: Iterator) -> Iterator:
        if self.val_data is None:
            return train
        device = next(iter(self.space.parameters())).device

        def cycle():
            while True:
                for x, y in self.val_data:
                    yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        return cycle()

    def _ce(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_of(self.gated(x)).float(), y)

    # ------------------------------------------------------------------ stages
    def _coarse_epoch(self, epoch: int) -> dict:
        total, n = 0.0, 0
        for x, y in tqdm(self._batches(), total=self.per_epoch, desc=f"jst coarse {epoch + 1}", leave=False,
                         disable=not self.cfg.progress):
            self.gates.set(self.space.flat(None))
            ce = self._ce(x, y)
            loss = ce + self.cfg.penalty * self.space.penalty()
            self.w_opt.zero_grad(set_to_none=True)
            self.a_opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients([*self.weights, *self.space.parameters()])
            self.w_opt.step()
            self.a_opt.step()
            self.sched.step()
            total, n = total + float(ce.detach()), n + 1
        self.gates.set(None)
        return {"stage": "coarse", "epoch": epoch + 1, "loss": total / max(n, 1)}

    def _search_epoch(self, epoch: int) -> dict:
        train = self._batches()
        val = self._val_stream(train)
        rewards, costs, thresholds = [], [], []
        for _ in tqdm(range(self.samples_per_epoch), desc=f"jst search {epoch + 1}", unit="sub-network",
                      leave=False, disable=not self.cfg.progress):
            th, log_prob = self.thresnet.act(self.space.features(), self.generator)
            draw = self.space.sample(th, self.cfg.noise, self.generator)
            keep = shrink_to_fit(draw.counts, draw.keep_count, self.measure, self.target)
            cost = self.measure(keep) / self.dense
            loss = self._train_subnetwork(keep, train, val)
            reward = -(loss + self.cfg.gamma * cost)
            self.policy.record(log_prob, reward)
            self._remember(keep, reward, cost)
            rewards.append(reward)
            costs.append(cost)
            thresholds.append(float(th.mean()))
            if len(self.policy.pending) >= self.cfg.samples:
                self.policy.update()
        self.policy.update()
        self.gates.set(None)
        n = max(len(rewards), 1)
        return {"stage": "search", "epoch": epoch + 1, "mean_reward": sum(rewards) / n,
                "best_reward": max(rewards, default=0.0), "mean_cost_ratio": sum(costs) / n,
                "mean_threshold": sum(thresholds) / n, "subnetworks": len(rewards)}

    def _train_subnetwork(self, keep: Keep, train: Iterator, val: Iterator) -> float:
        """M weight steps on training batches, N alpha steps on validation batches; the mean validation
        cross-entropy (measured before each alpha step)."""
        for x, y in islice(train, self.cfg.train_batches):
            self.gates.set(self.space.flat(keep).detach())
            loss = self._ce(x, y)
            self.w_opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(self.weights)
            self.w_opt.step()
            self.sched.step()
        losses = []
        for x, y in islice(val, self.cfg.val_batches):
            self.gates.set(self.space.flat(keep))
            ce = self._ce(x, y)
            loss = ce + self.cfg.penalty * self.space.penalty()
            self.a_opt.zero_grad(set_to_none=True)
            self.w_opt.zero_grad(set_to_none=True)
            loss.backward()
            average_gradients(self.space.parameters())
            self.a_opt.step()
            losses.append(float(ce.detach()))
        return mean_over_ranks(sum(losses) / max(len(losses), 1))

    def _remember(self, keep: Keep, reward: float, cost: float) -> None:
        """Keep the `candidates` best-rewarded distinct sub-networks."""
        entry = {"reward": float(reward), "cost": float(cost), "keep": [[g, list(c)] for g, c in sorted(keep.items())]}
        if any(c["keep"] == entry["keep"] for c in self.candidates):
            return
        self.candidates = sorted(self.candidates + [entry], key=lambda c: -c["reward"])[:self.cfg.candidates]

    # ------------------------------------------------------------------ thresholds
    def uniform_threshold(self) -> float:
        """The largest threshold, equal for every group, whose noise-free sub-network fits the budget (bisection):
        ThresNet starts there, so the first sub-networks are near the budget."""
        lo, hi = self.cfg.thres_low, 1.0
        n = len(self.space.gids)
        if self.measure(self.space.sample(torch.full((n,), hi), 0.0, None).keep()) <= self.target:
            return hi
        for _ in range(20):
            mid = (lo + hi) / 2
            fits = self.measure(self.space.sample(torch.full((n,), mid), 0.0, None).keep()) <= self.target
            lo, hi = (mid, hi) if fits else (lo, mid)
        return lo

    def mean_subnetwork(self) -> Keep:
        """The sub-network of ThresNet's mean thresholds without noise, scaled into the budget."""
        with torch.no_grad():
            th = self.thresnet(self.space.features())
        draw = self.space.sample(th, 0.0, None)
        return shrink_to_fit(draw.counts, draw.keep_count, self.measure, self.target)

    # ------------------------------------------------------------------ checkpoints
    def _parts(self) -> dict:
        return {"gated": self.gated, "space": self.space, "thresnet": self.thresnet, "w_opt": self.w_opt,
                "a_opt": self.a_opt, "sched": self.sched, "policy": self.policy}

    def _save(self) -> None:
        self.checkpoint.save({**{k: v.state_dict() for k, v in self._parts().items()},
                              "generator": self.generator.get_state(), "torch_rng": torch.get_rng_state(),
                              "log": self.log, "candidates": self.candidates, "epoch": self.epoch})

    def _resume(self) -> None:
        saved = self.checkpoint.load()
        if saved is None:
            return
        for name, part in self._parts().items():
            part.load_state_dict(saved[name])
        self.generator.set_state(saved["generator"])
        torch.set_rng_state(saved["torch_rng"])
        self.log, self.candidates, self.epoch = list(saved["log"]), list(saved["candidates"]), int(saved["epoch"])
