"""Float training: the cache, resuming after a crash, and corrupt checkpoints."""

from __future__ import annotations

import ctypes
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qsearch.checkpoint import rebuild_checkpoint
from qsearch.data import build_data
from qsearch.errors import UserError
from qsearch.models import build_model
from qsearch.train.fit import Monitor
from qsearch.train.float_model import (
    float_cache_dir,
    load_float_weights,
    read_float_checkpoint,
    train_float,
)
from qsearch.train.loop import cosine_schedule
from qsearch.train.runtime import resolve_runtime
from tests.conftest import compose


def _setup(tmp_path: Path, *overrides: str):
    cfg = compose(
        "train",
        f"cache_dir={tmp_path}",
        "train.epochs=5",
        "train.lr=0.1",
        "runtime.precision=fp32",
        *overrides,
    )
    return cfg, build_data(cfg.dataset), resolve_runtime(cfg.runtime)


def test_training_learns_digits_and_caches(tmp_path: Path) -> None:
    cfg, data, runtime = _setup(tmp_path)
    first = train_float(cfg, data, runtime)
    assert first.meta["val_acc"] > 80.0 and first.meta["epochs"] == 5
    assert first.path == float_cache_dir(cfg, runtime) / "model.pt"
    assert not (first.directory / "last.pt").exists()

    def must_not_train(epoch: int, row: dict) -> None:
        raise AssertionError("the cached checkpoint should have been used")

    again = train_float(cfg, data, runtime, monitor=Monitor(on_epoch_end=must_not_train))
    assert again.meta == first.meta


def test_cache_key_changes_with_recipe_and_seed(tmp_path: Path) -> None:
    cfg, _, runtime = _setup(tmp_path)
    other_lr, _, _ = _setup(tmp_path, "train.lr=0.01")
    other_seed, _, _ = _setup(tmp_path, "seed=1")
    other_root, _, _ = _setup(tmp_path, "data_root=/elsewhere")
    dirs = {float_cache_dir(c, runtime) for c in (cfg, other_lr, other_seed)}
    assert len(dirs) == 3
    assert float_cache_dir(other_root, runtime) == float_cache_dir(cfg, runtime)
    # float_seed follows seed unless fixed: search seeds can share one float model
    fixed, _, _ = _setup(tmp_path, "seed=1", "float_seed=0")
    assert float_cache_dir(fixed, runtime) == float_cache_dir(cfg, runtime)
    only_float, _, _ = _setup(tmp_path, "float_seed=1")
    assert float_cache_dir(only_float, runtime) == float_cache_dir(other_seed, runtime)


def test_cutout_changes_the_cache_key_only_when_on(tmp_path: Path) -> None:
    # cutout came after the first cached checkpoints: off, it must leave their keys alone
    cfg, _, runtime = _setup(tmp_path)
    off, _, _ = _setup(tmp_path, "+dataset.augment.cutout=0")
    on, _, _ = _setup(tmp_path, "+dataset.augment.cutout=4")
    assert float_cache_dir(off, runtime) == float_cache_dir(cfg, runtime)
    assert float_cache_dir(on, runtime) != float_cache_dir(cfg, runtime)


def test_weights_load_into_a_fresh_model(tmp_path: Path) -> None:
    cfg, data, runtime = _setup(tmp_path, "train.epochs=1")
    checkpoint = train_float(cfg, data, runtime)
    model = load_float_weights(build_model(cfg.model, data.info), checkpoint)
    assert model.classifier[-1].weight.abs().sum() > 0
    wrong = build_model(compose("train", "model=lenet_caffe").model, data.info)
    with pytest.raises(UserError, match="weights do not fit the model"):
        load_float_weights(wrong, checkpoint)


def test_corrupt_or_foreign_checkpoint_is_a_user_error(tmp_path: Path) -> None:
    corrupt = tmp_path / "bad.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint"):
        read_float_checkpoint(corrupt)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(UserError, match="not a qsearch float checkpoint"):
        read_float_checkpoint(foreign)


def test_evaluate_rebuilds_a_float_checkpoint_or_names_the_damage(tmp_path: Path) -> None:
    cfg, data, runtime = _setup(tmp_path, "train.epochs=1")
    path = train_float(cfg, data, runtime).path
    blob = torch.load(path, weights_only=True)
    loaded = rebuild_checkpoint(blob, path, "data", str(tmp_path))
    model, policy, meta = loaded.model, loaded.policy, loaded.meta
    assert loaded.kind == "float" and loaded.plan is None
    trained = load_float_weights(build_model(cfg.model, data.info), read_float_checkpoint(path))
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), trained.state_dict().values(), strict=True)
    )
    assert meta["epochs"] == 1 and {bits.w_bits for bits in policy.layers.values()} == {32}
    without_meta = {k: v for k, v in blob.items() if k != "meta"}
    with pytest.raises(UserError, match=r"malformed float checkpoint \(KeyError\)"):
        rebuild_checkpoint(without_meta, path, "data", str(tmp_path))
    with pytest.raises(UserError, match="not a qsearch float, quantized or dynamic checkpoint"):
        rebuild_checkpoint({"weights": torch.zeros(1)}, path, "data", str(tmp_path))


def test_cosine_schedule_values() -> None:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([param], lr=1.0)
    scheduler = cosine_schedule(optimizer, total_steps=10, warmup_steps=2)
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:3] == pytest.approx([0.5, 1.0, 1.0])
    assert lrs[6] == pytest.approx(0.5)  # halfway through the 8 cosine steps
    assert lrs[-1] == pytest.approx(0.5 * (1 + torch.cos(torch.tensor(7 / 8 * torch.pi))).item())


class _MallInfo2(ctypes.Structure):
    _fields_ = [  # glibc's struct mallinfo2 (<malloc.h>)
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def _mmapped_bytes_of_a_40mb_block() -> int:
    """Bytes glibc serves by mmap while one 40 MB block is allocated."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(40_000_000)
    during = libc.mallinfo2().hblkhd
    libc.free(block)
    return during - before


def test_cpu_runtime_keeps_large_blocks_in_the_heap() -> None:
    """On glibc a 40 MB tensor is mmapped and unmapped at every allocation (page faults
    each time) until ``retain_freed_memory`` raises the mmap threshold; resolving a CPU
    runtime does that."""
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("not glibc >= 2.33")
    script = (
        "import sys; sys.path.insert(0, 'tests'); from test_train import "
        "_mmapped_bytes_of_a_40mb_block as m; from omegaconf import OmegaConf; "
        "from qsearch.train.runtime import resolve_runtime; before = m(); "
        "resolve_runtime(OmegaConf.create({'device': 'cpu', 'precision': 'fp32', "
        "'channels_last': False})); print(before, m())"
    )
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=repo, check=True
    )
    before, after = map(int, done.stdout.split())
    assert before >= 40_000_000  # glibc's default: mmapped
    assert after == 0  # served from the heap
