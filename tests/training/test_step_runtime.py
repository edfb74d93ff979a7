"""The training step's switches (train.precision, memory_format, compile, log_every) and its
data parallelism through DistributedDataParallel, on the CPU."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from vireid.config import Config, ConfigError
from vireid.modeling.task import interleave_modalities
from vireid.training.epoch import build_train_loader
from vireid.training.loop import Trainer, epoch_seed, seed_everything
from vireid.training.runtime import resolve_runtime

WORLD = 2


def _with(cfg: Config, **train: object) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **train))


CAPABLE = {"has_c_compiler": True, "bf16_native": True}  # a machine that can run every switch


def test_auto_is_fast_on_gpu_plain_on_cpu() -> None:
    cfg = Config().train
    cpu = resolve_runtime(cfg, torch.device("cpu"), **CAPABLE)
    gpu = resolve_runtime(cfg, torch.device("cuda"), **CAPABLE)  # only .type is read: no GPU needed
    assert (cpu.autocast_dtype, cpu.channels_last, cpu.compile_regions) == (None, False, False)
    assert (gpu.autocast_dtype, gpu.channels_last, gpu.compile_regions) == (torch.bfloat16, True, True)
    assert cpu.notes == gpu.notes == ()
    forced = resolve_runtime(dataclasses.replace(cfg, precision="bf16", memory_format="channels_last",
                                                 compile="none"), torch.device("cpu"), **CAPABLE)
    assert (forced.precision, forced.channels_last, forced.compile_regions) == ("bf16", True, False)


def test_cudnn_benchmark_on_cuda_only(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config().train
    gpu = resolve_runtime(cfg, torch.device("cuda"), **CAPABLE)
    cpu = resolve_runtime(cfg, torch.device("cpu"), **CAPABLE)
    assert gpu.cudnn_benchmark is True and cpu.cudnn_benchmark is False
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    cpu.apply()
    assert torch.backends.cudnn.benchmark is False
    gpu.apply()
    assert torch.backends.cudnn.benchmark is True


def test_auto_without_compiler_or_native_bf16_falls_back_with_one_note_each() -> None:
    cfg = Config().train  # precision, compile: auto
    gpu = resolve_runtime(cfg, torch.device("cuda"), has_c_compiler=False, bf16_native=False)
    assert (gpu.precision, gpu.compile_regions, gpu.channels_last) == ("fp32", False, True)
    assert len(gpu.notes) == 2
    assert "train.precision: auto runs fp32" in gpu.notes[0] and "bf16" in gpu.notes[0]
    assert "train.compile: auto runs eager" in gpu.notes[1] and "C compiler" in gpu.notes[1]
    assert all("\n" not in n for n in gpu.notes)
    only_cc = resolve_runtime(cfg, torch.device("cuda"), has_c_compiler=False, bf16_native=True)
    assert (only_cc.precision, only_cc.compile_regions, len(only_cc.notes)) == ("bf16", False, 1)
    # on the CPU auto is already eager fp32, and bf16 is not a question of the GPU
    cpu = resolve_runtime(cfg, torch.device("cpu"), has_c_compiler=False, bf16_native=False)
    assert (cpu.precision, cpu.compile_regions, cpu.notes) == ("fp32", False, ())
    cpu_bf16 = resolve_runtime(dataclasses.replace(cfg, precision="bf16"), torch.device("cpu"),
                               has_c_compiler=True, bf16_native=False)
    assert cpu_bf16.precision == "bf16"


@pytest.mark.parametrize(("switch", "capability", "key"), [
    ({"compile": "regions"}, {"has_c_compiler": False, "bf16_native": True}, "train.compile"),
    ({"precision": "bf16"}, {"has_c_compiler": True, "bf16_native": False}, "train.precision")])
def test_explicit_switch_the_machine_cannot_run_is_one_line_naming_the_key(
        switch: dict[str, str], capability: dict[str, bool], key: str) -> None:
    from vireid.errors import error_line

    cfg = dataclasses.replace(Config().train, **switch)
    with pytest.raises(ConfigError, match=f"^{key}: ") as info:
        resolve_runtime(cfg, torch.device("cuda"), **capability)
    line = error_line(info.value)
    assert line is not None and line.startswith(f"error: {key}: ") and "\n" not in line


def test_c_compiler_probe_prefers_cc_from_the_environment() -> None:
    from vireid.training.loop import c_compiler_found

    on_path = {"gcc": "/usr/bin/gcc", "mycc": "/opt/mycc"}
    assert c_compiler_found({}, on_path.get) is True  # gcc
    assert c_compiler_found({}, {}.get) is False  # nothing installed
    assert c_compiler_found({"CC": "mycc"}, on_path.get) is True
    assert c_compiler_found({"CC": "missing-cc"}, on_path.get) is False  # Triton would use $CC as given


@pytest.mark.parametrize(("key", "value"), [("precision", "fp16"), ("memory_format", "nhwc"),
                                            ("compile", "on"), ("log_every", 0), ("storage", " ")])
def test_bad_switch_names_its_key(tiny_shards: tuple[Path, Config], key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=f"train.{key}"):
        _with(tiny_shards[1], **{key: value})


def test_trainer_logs_the_batch_plan_once_and_scales_the_lr(tiny_shards: tuple[Path, Config],
                                                             caplog: pytest.LogCaptureFixture) -> None:
    shards, base = tiny_shards  # P=2, K=2, lr 0.05, backbone_lr 0.01, 3 batches per epoch
    cfg = _with(base, lr_scaling="linear")
    with caplog.at_level(logging.INFO, logger="vireid.training.loop"):
        rank0 = Trainer(cfg, shards, rank=0, world_size=2)
        rank1 = Trainer(cfg, shards, rank=1, world_size=2)
    lines = [r.getMessage() for r in caplog.records if "global batch" in r.getMessage()]
    assert lines == ["data parallel: world size 2, per-worker batch 8 (P=2 x K=2 x 2 modalities), "
                     "global batch 16, 3 steps per epoch, lr 0.1 / backbone_lr 0.02 (train.lr_scaling: linear)"]
    for trainer in (rank0, rank1):
        lrs = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
        assert lrs == pytest.approx({"head": 0.1, "backbone": 0.02})
    assert rank0.task.rows_per_rank == 8  # the fixed per-rank batch every rank writes to the memory


def test_losses_are_read_back_once_per_window(tiny_shards: tuple[Path, Config]) -> None:
    shards, base = tiny_shards
    cfg = _with(base, iters_per_epoch=5, log_every=2)
    windows: list[list[int]] = []
    trainer = Trainer(cfg, shards)
    record = trainer.run_epoch(on_log=lambda rows: windows.append([i for i, _ in rows]))
    assert windows == [[0, 1], [2, 3], [4]]  # every 2 steps, and the rest at the end
    assert record["steps"] == 5


def test_non_finite_loss_is_caught_within_the_window(tiny_shards: tuple[Path, Config]) -> None:
    shards, base = tiny_shards
    trainer = Trainer(_with(base, iters_per_epoch=4, log_every=4), shards)
    calls = {"n": 0}
    forward = trainer.task.forward

    def poisoned(x: torch.Tensor, y: torch.Tensor, m: torch.Tensor):  # the third step's loss is NaN
        losses, state = forward(x, y, m)
        calls["n"] += 1
        if calls["n"] == 3:
            losses["id"] = losses["id"] * float("nan")
        return losses, state

    trainer.forward = poisoned  # type: ignore[assignment]
    with pytest.raises(FloatingPointError, match=r"epoch 1 step 2: non-finite loss .*'id': nan"):
        trainer.run_epoch()
    assert calls["n"] == 4  # detected at the window's read-back, not by a per-step sync


def test_bf16_on_cpu_learns(tiny_shards: tuple[Path, Config]) -> None:
    """bf16 autocast on the CPU: the loss falls over a few epochs like fp32's."""
    shards, base = tiny_shards
    cfg = _with(base, precision="bf16", epochs=6, iters_per_epoch=6, warmup_epochs=1, milestones=[5],
                validate_every=6)
    trainer = Trainer(cfg, shards)
    assert trainer.runtime.precision == "bf16"
    losses = [trainer.run_epoch()["loss"] for _ in range(cfg.train.epochs)]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.8 * losses[0], losses


def test_compiled_regions_give_the_eager_losses(tiny_shards: tuple[Path, Config]) -> None:
    """train.compile: regions and channels_last compute the eager step's losses (same seed,
    same batches) within float tolerance, and the same weights after the epoch."""
    shards, base = tiny_shards
    torch._dynamo.reset()
    runs = {}
    for name, cfg in {"eager": base, "compiled": _with(base, compile="regions",
                                                        memory_format="channels_last")}.items():
        rows: list[dict[str, float]] = []
        trainer = Trainer(_with(cfg, iters_per_epoch=3, log_every=1), shards)
        trainer.run_epoch(on_log=lambda r, rows=rows: rows.extend(t for _, t in r))
        runs[name] = (rows, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
    assert Trainer(_with(base, compile="regions"), shards).runtime.compile_regions
    (eager, w_e), (compiled, w_c) = runs["eager"], runs["compiled"]
    for a, b in zip(eager, compiled, strict=True):
        for k in ("id", "tri", "loss"):
            assert b[k] == pytest.approx(a[k], rel=1e-3, abs=1e-4), k
    assert w_e.keys() == w_c.keys()  # compiling in place keeps the state_dict keys
    # the weights after 3 steps: the compiled run's difference from the eager run is small
    # against how far the eager run moved them (float reassociation, amplified by momentum)
    w_0 = Trainer(base, shards).model.state_dict()
    names = [n for n, p in Trainer(base, shards).model.named_parameters() if p.requires_grad]
    diff = sum(float((w_c[n].float() - w_e[n].float()).pow(2).sum()) for n in names) ** 0.5
    moved = sum(float((w_e[n].float() - w_0[n].float()).pow(2).sum()) for n in names) ** 0.5
    print(f"compiled vs eager after 3 steps: |diff| {diff:.3g}, |update| {moved:.3g}")
    assert moved > 0 and diff < 0.05 * moved


# -------------------------------------------------------------------- data parallelism


def _ddp_worker(rank: int, store: str, out: str, shards: str, plain: dict) -> None:
    from vireid.config import config_from_dict

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    try:
        trainer = Trainer(config_from_dict(plain), shards, rank=rank, world_size=WORLD)
        assert isinstance(trainer.forward, torch.nn.parallel.DistributedDataParallel)
        trainer.run_epoch()
        torch.save({k: v for k, v in trainer.model.named_parameters()}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _reference(cfg: Config, shards: Path) -> dict[str, torch.Tensor]:
    """One process doing what two data-parallel ranks must do: each step, the gradient of
    rank 0's batch and of rank 1's batch from the same weights, averaged; the memory written
    with both ranks' features (rank order)."""
    trainer = Trainer(cfg, shards)
    batches = []
    for rank in range(WORLD):  # each rank's draws, as its worker makes them
        loader, sampler = build_train_loader(trainer.train_table, cfg, rank, WORLD)
        seed_everything(epoch_seed(cfg.train.seed, 0, rank))
        sampler.set_epoch(0)
        batches.append(list(loader))
    task, opt = trainer.task, trainer.optimizer
    task.train()
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    for step in zip(*batches, strict=True):
        grads, states = [], []
        for b in step:
            opt.zero_grad(set_to_none=True)
            losses, state = task(b["image"], b["label"].long(), b["modality"].long())
            task.total(losses).backward()
            grads.append([p.grad.clone() for p in params])
            states.append(state)
        for p, g0, g1 in zip(params, *grads, strict=True):
            p.grad = (g0 + g1) / 2
        opt.step()
        if task.model.memory is not None:
            orders = [interleave_modalities(s.labels.shape[0]) for s in states]
            task.model.memory.write(torch.cat([s.features[o] for s, o in zip(states, orders, strict=True)]),
                                    torch.cat([s.labels[o] for s, o in zip(states, orders, strict=True)]))
    return dict(trainer.model.named_parameters())


def test_two_ddp_workers_stay_identical_and_match_averaged_gradients(
        tiny_shards: tuple[Path, Config], tmp_path: Path) -> None:
    shards, base = tiny_shards
    cfg = _with(base, iters_per_epoch=3)
    from vireid.config import config_to_dict

    mp.start_processes(_ddp_worker, args=(str(tmp_path / "store"), str(tmp_path), str(shards),
                                          config_to_dict(cfg)),
                       nprocs=WORLD, join=True, start_method="spawn")  # fork: autograd threads may exist
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    for name in r0:
        assert torch.equal(r0[name], r1[name]), f"{name} differs between the ranks"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: the same kernels, the same summation order
    try:
        ref = _reference(cfg, shards)
    finally:
        torch.set_num_threads(threads)
    start = dict(Trainer(cfg, shards).model.named_parameters())
    moved = [n for n in r0 if not torch.equal(r0[n], start[n])]
    assert len(moved) > 0.9 * len(r0)  # the step changed (nearly) every parameter
    for name in r0:
        torch.testing.assert_close(r0[name], ref[name].detach(), rtol=1e-4, atol=1e-5, msg=name)
