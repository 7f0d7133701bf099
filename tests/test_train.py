"""fxprune.train: the training harness (CPU, tiny models, synthetic data), and a real 2-process DDP run."""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fxprune.train import (
    OPTIMIZERS, SCHEDULES, EpochRecord, Finetune, Trainer, TrainConfig, TrainHistory, evaluate, make_optimizer,
    make_scheduler, reinitialise, seed_everything,
)
from fxprune.train import distributed as D

from helpers import load_module, torchrun

HERE = Path(__file__).parent


def blobs(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A learnable 3-class task: 8-d inputs around one random mean per class."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 8, generator=g) + 2 * torch.randn(3, 8, generator=g)[y], y


def loader(n: int = 128, batch: int = 32, shuffle: bool = False, seed: int = 0) -> DataLoader:
    return DataLoader(TensorDataset(*blobs(n, seed)), batch_size=batch, shuffle=shuffle)


def mlp(seed: int = 0, dropout: float = 0.0, bn: bool = True) -> nn.Module:
    torch.manual_seed(seed)
    norm = nn.BatchNorm1d(16) if bn else nn.Identity()
    return nn.Sequential(nn.Linear(8, 16), norm, nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 3))


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"progress": False, **kw})


def assert_same_weights(a: nn.Module, b: nn.Module, atol: float = 0.0) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], atol=atol, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


# ------------------------------------------------------------------------------------------- training

def test_training_learns_a_learnable_task():
    data = loader(shuffle=True)
    model = mlp()
    before = evaluate(model, data)
    history = Trainer(model, cfg(epochs=6, lr=0.2), data, eval_data=data).fit()
    assert len(history.records) == 6 and [r.epoch for r in history.records] == list(range(6))
    assert history.records[-1].train_loss < 0.5 * history.records[0].train_loss
    assert history.last_acc() > 90 > before[1]
    assert history.best_acc() == max(r.eval_acc for r in history.records)
    assert all(r.images_per_s > 0 and r.seconds > 0 for r in history.records)


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    def run(seed: int) -> nn.Module:
        model = mlp(dropout=0.3)
        Trainer(model, cfg(epochs=2, seed=seed), loader(shuffle=True)).fit()
        return model
    a, b, c = run(1), run(1), run(2)
    assert_same_weights(a, b)
    assert not torch.equal(a[0].weight, c[0].weight)


def test_eval_every_skips_epochs_but_always_evaluates_the_last():
    h = Trainer(mlp(), cfg(epochs=5, eval_every=2), loader(), eval_data=loader()).fit()
    assert [r.eval_acc is not None for r in h.records] == [False, True, False, True, True]
    assert h.records[0].eval_loss is None and h.last_acc() == h.records[-1].eval_acc


def test_eval_loss_is_plain_cross_entropy_even_with_label_smoothing():
    model = mlp()
    h = Trainer(model, cfg(epochs=1, label_smoothing=0.3), loader(), eval_data=loader()).fit()
    assert h.records[0].eval_loss == pytest.approx(evaluate(model, loader())[0], rel=1e-6)


def test_adamw_and_grad_clip_and_constant_schedule_train():
    model = mlp()
    h = Trainer(model, cfg(epochs=4, optimizer="adamw", lr=1e-2, schedule="constant", grad_clip=1.0,
                           weight_decay=0.01), loader()).fit()
    assert h.records[-1].train_loss < h.records[0].train_loss
    assert all(r.lr == 1e-2 for r in h.records)


def test_max_steps_caps_each_epoch_and_after_step_counts_every_step():
    seen: list[int] = []
    Trainer(mlp(), cfg(epochs=3, max_steps=2), loader(), after_step=lambda m, s: seen.append(s)).fit()
    assert seen == list(range(6))


def test_extra_loss_is_added_to_the_objective():
    l1 = lambda m: 0.5 * sum(p.abs().sum() for n, p in m.named_parameters() if n.endswith("weight"))  # noqa: E731
    plain, pen = mlp(), mlp()
    Trainer(plain, cfg(epochs=2), loader()).fit()
    h = Trainer(pen, cfg(epochs=2), loader(), extra_loss=l1).fit()
    norm = lambda m: sum(p.abs().sum().item() for p in m.parameters())  # noqa: E731
    assert norm(pen) < 0.7 * norm(plain)
    assert h.records[0].train_loss > 5  # the penalty is part of the reported loss


def test_outputs_that_are_tuples_or_dataclasses_use_the_first_tensor():
    @dataclass
    class Out:
        logits: torch.Tensor
        aux: torch.Tensor

    class Wrap(nn.Module):
        def __init__(self, kind: str):
            super().__init__()
            self.net, self.kind = mlp(), kind

        def forward(self, x):
            z = self.net(x)
            return (None, z, z * 0) if self.kind == "tuple" else Out(z, z * 0)

    ref = mlp()
    Trainer(ref, cfg(epochs=2), loader()).fit()
    for kind in ("tuple", "dataclass"):
        w = Wrap(kind)
        Trainer(w, cfg(epochs=2), loader()).fit()
        assert_same_weights(w.net, ref)


def test_set_epoch_is_called_and_plain_lists_and_model_mode_restored():
    class Tracking(list):
        epochs: list[int] = []

        def set_epoch(self, e: int) -> None:
            self.epochs.append(e)

    x, y = blobs(64)
    data = Tracking([(x[:32], y[:32]), (x[32:], y[32:])])
    model = mlp().eval()
    Trainer(model, cfg(epochs=3), data).fit()
    assert data.epochs == [0, 1, 2]
    assert not model.training


# ------------------------------------------------------------------------------------------- schedules

def lr_curve(schedule: str, steps: int = 100, **kw) -> list[float]:
    c = cfg(schedule=schedule, lr=0.4, **kw)
    opt = make_optimizer([nn.Parameter(torch.zeros(1))], c)
    sched = make_scheduler(opt, c, steps)
    lrs = []
    for _ in range(steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


@pytest.mark.parametrize("schedule", ["onecycle", "cosine"])
def test_lr_curves_peak_at_warmup_end_and_end_near_zero(schedule):
    assert set(SCHEDULES) == {"onecycle", "cosine", "constant"}
    lrs = lr_curve(schedule, warmup=0.2)
    peak = max(range(100), key=lrs.__getitem__)
    assert peak == 20 and lrs[peak] == pytest.approx(0.4)
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21]))      # warm-up rises
    assert all(a >= b for a, b in zip(lrs[20:], lrs[21:]))      # then anneals
    assert lrs[-1] < 0.01 * 0.4
    if schedule == "onecycle":
        assert lrs[0] == pytest.approx(0.4 / 25)                  # starts at lr / div_factor, as OneCycleLR


def test_cosine_without_warmup_starts_at_lr_and_constant_is_flat():
    lrs = lr_curve("cosine", warmup=0.0)
    assert lrs[0] == pytest.approx(0.4) and lrs[50] == pytest.approx(0.2, abs=0.01)
    assert set(lr_curve("constant")) == {0.4}


def test_sized_schedules_need_a_known_number_of_steps():
    def gen():
        yield from loader()

    class Unsized:
        def __iter__(self):
            return gen()

    with pytest.raises(ValueError, match="max_steps"):
        Trainer(mlp(), cfg(), Unsized()).fit()
    h = Trainer(mlp(), cfg(max_steps=3), Unsized()).fit()
    assert len(h.records) == 1


# ------------------------------------------------------------------------------------------- losses

def first_batch_loss(model: nn.Module, config: TrainConfig, **kw) -> float:
    """The reported train loss of a 1-step run: the loss of the initial model on the first batch."""
    return Trainer(model, config, loader(), **kw).fit().records[0].train_loss


def test_kd_with_a_copy_of_the_student_as_teacher_starts_at_zero():
    student = mlp(bn=False)  # (BatchNorm would differ: batch statistics in the student, running ones in the teacher)
    teacher = copy.deepcopy(student).train()
    loss = first_batch_loss(student, cfg(max_steps=1, kd_alpha=1.0, kd_temperature=4.0), teacher=teacher)
    assert abs(loss) < 1e-6
    assert teacher.training  # the teacher's mode is restored (it ran in eval mode)
    other = first_batch_loss(mlp(), cfg(max_steps=1, kd_alpha=1.0), teacher=mlp(seed=1))
    assert other > 1e-3


def test_kd_loss_mixes_cross_entropy_and_hinton_kl():
    student, teacher = mlp(), mlp(seed=1).eval()
    x, y = next(iter(loader()))
    with torch.no_grad():
        s, t = copy.deepcopy(student).train()(x), teacher(x)
    T, a = 3.0, 0.25
    kl = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean") * T * T
    want = (1 - a) * F.cross_entropy(s, y) + a * kl
    got = first_batch_loss(student, cfg(max_steps=1, kd_alpha=a, kd_temperature=T), teacher=teacher)
    assert got == pytest.approx(want.item(), rel=1e-5)


def test_label_smoothing_changes_the_loss_as_torch_cross_entropy_does():
    x, y = next(iter(loader()))
    with torch.no_grad():
        logits = mlp().train()(x)
    for ls in (0.0, 0.1, 0.3):
        got = first_batch_loss(mlp(), cfg(max_steps=1, label_smoothing=ls))
        assert got == pytest.approx(F.cross_entropy(logits, y, label_smoothing=ls).item(), rel=1e-6)
    assert first_batch_loss(mlp(), cfg(max_steps=1, label_smoothing=0.3)) != pytest.approx(
        first_batch_loss(mlp(), cfg(max_steps=1)), rel=1e-3)


def test_custom_loss_fn_replaces_cross_entropy():
    h = Trainer(mlp(), cfg(max_steps=1), loader(), loss_fn=lambda out, y: out.sum() * 0 + 7.0).fit()
    assert h.records[0].train_loss == pytest.approx(7.0)


# ------------------------------------------------------------------------------------------- checkpoints

def test_resume_after_an_interruption_matches_an_uninterrupted_run(tmp_path):
    def config(d):
        return cfg(epochs=2, lr=0.1, checkpoint_dir=d)
    data = loader(shuffle=True)  # shuffling and dropout draw from the RNGs the checkpoint restores
    ref = mlp(dropout=0.3)
    ref_hist = Trainer(ref, config(None), data, eval_data=loader()).fit()

    steps_per_epoch = len(data)

    def crash(model, step):
        if step == steps_per_epoch:  # the first step of the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Trainer(mlp(dropout=0.3), config(tmp_path), data, eval_data=loader(), after_step=crash).fit()
    assert (tmp_path / "last.pt").exists() and not list(tmp_path.glob(".*tmp*"))

    resumed = mlp(seed=123, dropout=0.3)  # different initial weights: everything must come from last.pt
    hist = Trainer(resumed, config(tmp_path), data, eval_data=loader()).fit()
    assert_same_weights(resumed, ref, atol=1e-6)
    assert [r.epoch for r in hist.records] == [0, 1]
    for a, b in zip(hist.records, ref_hist.records):
        assert (a.lr, a.train_loss, a.eval_acc) == pytest.approx((b.lr, b.train_loss, b.eval_acc), rel=1e-6)

    done = mlp(seed=5)  # a finished run resumes to nothing more to do and returns the stored history
    assert len(Trainer(done, config(tmp_path), data).fit().records) == 2
    assert_same_weights(done, ref, atol=1e-6)


def test_checkpoints_load_with_weights_only(tmp_path):
    model = mlp()
    h = Trainer(model, cfg(epochs=2, checkpoint_dir=str(tmp_path)), loader(), eval_data=loader()).fit()
    last = torch.load(tmp_path / "last.pt", weights_only=True)
    assert last["epoch"] == 1 and last["step"] == 2 * len(loader())
    assert TrainHistory.from_dict(last["history"]) == h
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config"} <= last.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(last["model"][k], v)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["eval_acc"] == h.best_acc()


def test_resume_false_starts_over_and_a_changed_run_length_is_refused(tmp_path):
    Trainer(mlp(), cfg(epochs=1, checkpoint_dir=tmp_path), loader()).fit()
    with pytest.raises(ValueError, match="resume=False"):
        Trainer(mlp(), cfg(epochs=3, checkpoint_dir=tmp_path), loader()).fit()
    h = Trainer(mlp(), cfg(epochs=3, checkpoint_dir=tmp_path, resume=False), loader()).fit()
    assert len(h.records) == 3
    wrong = nn.Sequential(nn.Linear(8, 3))
    with pytest.raises(ValueError, match="different model"):
        Trainer(wrong, cfg(epochs=3, checkpoint_dir=tmp_path), loader()).fit()


def test_a_failure_restores_the_teacher():
    teacher = mlp(seed=1).train()

    def boom(model, step):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        Trainer(mlp(), cfg(), loader(), teacher=teacher, after_step=boom).fit()
    assert teacher.training and next(teacher.parameters()).device.type == "cpu"


def test_divergence_is_reported():
    x, y = blobs(64)
    data = [(x[:32] * 1e6, y[:32]), (x[32:] * 1e6, y[32:])]  # the first step's huge update overflows the second
    with pytest.raises(FloatingPointError, match="diverged in epoch 1"):
        Trainer(nn.Linear(8, 3), cfg(lr=1e30, schedule="constant", weight_decay=0), data).fit()


# ------------------------------------------------------------------------------------------- helpers

def test_evaluate_on_a_hand_made_case():
    class Fixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.p = nn.Parameter(torch.zeros(1))

        def forward(self, x):
            return x + self.p

    logits = torch.tensor([[3.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    y = torch.tensor([0, 1, 2, 2])  # 3 of 4 right
    model = Fixed().train()
    loss, acc = evaluate(model, [(logits[:3], y[:3]), (logits[3:], y[3:])])
    assert acc == 75.0
    assert loss == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert model.training
    assert evaluate(model, [(logits[:3], y[:3]), (logits[3:], y[3:])], max_batches=1)[1] == 100.0
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, [])


def test_reinitialise_changes_conv_linear_and_batchnorm():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(0.5)
    net[1].running_mean.fill_(3.0)
    reinitialise(net)
    assert not torch.all(net[0].weight == 0.5) and not torch.all(net[3].weight == 0.5)
    assert torch.all(net[1].weight == 1) and torch.all(net[1].bias == 0)
    assert torch.all(net[1].running_mean == 0)


def test_seed_everything_seeds_python_numpy_and_torch():
    import random

    import numpy as np
    seed_everything(11)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(11)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_progress_false_is_silent_and_progress_true_prints_the_summary(capsys):
    Trainer(mlp(), cfg(epochs=2), loader(), eval_data=loader()).fit()
    out, err = capsys.readouterr()
    assert out == "" and err == ""
    h = Trainer(mlp(), TrainConfig(epochs=2), loader(), eval_data=loader()).fit()
    out, _ = capsys.readouterr()
    assert h.summary_table() in out and "total time" in out


def test_summary_table_and_history_round_trip():
    h = TrainHistory([EpochRecord(0, 0.1, 1.0, 50.0, None, None, 2.0, 100.0),
                      EpochRecord(1, 0.05, 0.5, 80.0, 0.4, 85.0, 3.0, 120.0)])
    lines = h.summary_table().splitlines()
    assert len(lines) == 4 and len({len(x) for x in lines[:3]}) == 1  # fixed width
    assert "total time 5.0s" in lines[-1] and h.best_acc() == h.last_acc() == 85.0
    assert TrainHistory.from_dict(h.to_dict()) == h
    assert TrainHistory().best_acc() is None


# ------------------------------------------------------------------------------------------- config

@pytest.mark.parametrize("kw, needle", [
    ({"optimizer": "adam"}, "Valid names: 'adamw', 'sgd'"),
    ({"schedule": "step"}, "Valid names: 'constant', 'cosine', 'onecycle'"),
    ({"epochs": 0}, "TrainConfig.epochs=0"),
    ({"epochs": 1.5}, "TrainConfig.epochs=1.5"),
    ({"lr": 0}, "TrainConfig.lr=0"),
    ({"lr": float("nan")}, "TrainConfig.lr=nan"),
    ({"momentum": 1.0}, "TrainConfig.momentum=1.0"),
    ({"warmup": 1.0}, "TrainConfig.warmup=1.0"),
    ({"label_smoothing": -0.1}, "TrainConfig.label_smoothing=-0.1"),
    ({"amp": "fp8"}, "'bf16', 'fp16' or None"),
    ({"grad_clip": 0}, "TrainConfig.grad_clip=0"),
    ({"kd_temperature": 0}, "TrainConfig.kd_temperature=0"),
    ({"kd_alpha": 1.5}, "TrainConfig.kd_alpha=1.5"),
    ({"seed": -1}, "TrainConfig.seed=-1"),
    ({"eval_every": 0}, "TrainConfig.eval_every=0"),
    ({"max_steps": 0}, "TrainConfig.max_steps=0"),
    ({"progress": "yes"}, "TrainConfig.progress='yes'"),
    ({"momentum": 0.0}, "needs momentum > 0"),
    ({"checkpoint_dir": 3}, "TrainConfig.checkpoint_dir=3"),
])
def test_config_validation_names_the_field_and_the_fix(kw, needle):
    with pytest.raises(ValueError) as e:
        TrainConfig(**kw)
    assert needle in str(e.value)


def test_finetune_defaults_and_checks():
    f = Finetune()
    assert isinstance(f, TrainConfig) and f.lr == 0.01 and f.schedule == "cosine" and not f.kd
    assert set(OPTIMIZERS) == {"sgd", "adamw"}
    with pytest.raises(ValueError, match="Finetune.kd='yes'"):
        Finetune(kd="yes")
    with pytest.raises(ValueError, match="teacher"):
        Trainer(mlp(), Finetune(kd=True), loader())
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(mlp(), {"epochs": 1}, loader())


def test_from_scratch_reinitialises_before_training():
    model = mlp()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    Trainer(model, Finetune(from_scratch=True, max_steps=1, progress=False, lr=1e-6), loader()).fit()
    assert model[0].weight.abs().sum() > 1 and model[4].weight.abs().sum() > 0.1


def test_data_that_cannot_be_sharded_gets_a_clear_error():
    with pytest.raises(ValueError, match="DistributedSampler"):
        D.shard([(torch.zeros(1), torch.zeros(1))], 0, 2, "train_data")
    dl = loader()
    assert not D.can_shard(dl)
    assert D.init_from_env().world_size == 1  # no torchrun environment: a no-op


def test_the_module_smoke_run_trains(capsys):
    from fxprune.train.__main__ import main
    assert main(["--epochs", "2", "--samples", "256", "--batch-size", "64", "--lr", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "total time" in out and "epoch 2/2" in out


# ------------------------------------------------------------------------------------------- DDP

def test_ddp_two_gloo_processes_match_a_single_process_run(tmp_path):
    """torchrun, 2 CPU processes (gloo): identical weights on both ranks, equal to one process training
    on the same global batches (DDP averages the gradients of equal shards = the full-batch gradient)."""
    torchrun(HERE / "ddp_train_worker.py", tmp_path, timeout=120)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert r0["world_size"] == r1["world_size"] == 2
    for k in r0["state"]:  # (a) both ranks end with identical parameters
        assert torch.equal(r0["state"][k], r1["state"][k]), k

    worker = load_module(HERE / "ddp_train_worker.py", "ddp_train_worker")  # (b) the single-process run with the same global batches and seed
    model, train, evalset = worker.build()
    single = Trainer(model, worker.config(None), train, evalset, device="cpu").fit()
    for k, v in model.state_dict().items():
        torch.testing.assert_close(r0["state"][k], v, atol=1e-5, rtol=0)

    ddp = TrainHistory.from_dict(r0["history"])  # (c) the reported metrics are the global ones
    assert len(ddp.records) == len(single.records) == 2
    for a, b in zip(ddp.records, single.records):
        assert (a.epoch, a.lr) == (b.epoch, b.lr)
        assert (a.train_loss, a.eval_loss) == pytest.approx((b.train_loss, b.eval_loss), rel=1e-5)
        assert (a.train_acc, a.eval_acc) == (b.train_acc, b.eval_acc)
    for a, b in zip(ddp.records, TrainHistory.from_dict(r1["history"]).records):
        assert (a.train_loss, a.train_acc, a.eval_acc) == (b.train_loss, b.train_acc, b.eval_acc)
    last = torch.load(tmp_path / "ckpt" / "last.pt", weights_only=True)  # rank 0 wrote the checkpoint
    assert last["epoch"] == 1 and all(torch.equal(last["model"][k], r0["state"][k]) for k in r0["state"])
