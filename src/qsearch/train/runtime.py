"""Device, numeric precision and threads for a run (``conf/runtime/``)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from qsearch.errors import UserError
from qsearch.quant.kernels import set_compile

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt() parameters (<malloc.h>)
RETAINED_BYTES = 1 << 30


@functools.cache
def retain_freed_memory() -> bool:
    """Let glibc keep freed blocks of up to 1 GiB for reuse instead of returning them to the
    OS; True when it took the settings, False where libc is not glibc (a no-op there).

    glibc serves allocations above its mmap threshold (at most 32 MiB) with ``mmap`` and
    unmaps them when freed, so each such tensor pays a page fault per 4 KiB page on first
    touch. A batch of 512 CIFAR-10 images through ResNet-20's first block is 33.5 MB per
    activation tensor: the fake quantizers' fresh tensors cost more than the convolutions.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mmap = mallopt(M_MMAP_THRESHOLD, RETAINED_BYTES)
    trim = mallopt(M_TRIM_THRESHOLD, RETAINED_BYTES)
    return bool(mmap and trim)


def cpu_has_fast_bf16() -> bool:
    """True on CPUs with AMX or AVX512-BF16, where bf16 autocast speeds up convs ~3x."""
    probes = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in probes)


@dataclass(frozen=True)
class Runtime:
    """Where and how tensors compute: ``device`` and ``bf16`` autocast on or off."""

    device: torch.device
    bf16: bool
    channels_last: bool

    def autocast(self) -> contextlib.AbstractContextManager[None]:
        """bf16 autocast on this device when enabled, else a no-op context."""
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """Move ``model`` to the device (and channels-last memory format where chosen)."""
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    @contextlib.contextmanager
    def no_autocast(self) -> Iterator[None]:
        """Leave autocast for numerically sensitive code (quantizers, losses)."""
        with torch.autocast(self.device.type, enabled=False):
            yield


def resolve_runtime(cfg: DictConfig) -> Runtime:
    """Resolve ``runtime.device``/``precision`` (``auto`` picks CUDA and bf16 where present)."""
    requested = str(cfg.device)
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"runtime.device={requested} but no CUDA device is available")
    device = torch.device(requested)
    precision = str(cfg.precision)
    if precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"runtime.precision must be auto, bf16 or fp32, got '{precision}'")
    if precision == "auto":
        bf16 = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_fast_bf16()
    else:
        bf16 = precision == "bf16"
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if device.type == "cpu":
        retain_freed_memory()
    set_compile(bool(cfg.get("compile", False)))
    return Runtime(device=device, bf16=bf16, channels_last=bool(cfg.channels_last))
