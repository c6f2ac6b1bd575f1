"""``qsearch export``: a quantized checkpoint as a bit-packed qpack file and/or ONNX QDQ graph."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from rich.table import Table
from torch import Tensor

from qsearch.checkpoint import Checkpoint, load_checkpoint
from qsearch.commands._common import console, run_dir
from qsearch.data import dataset_shape
from qsearch.errors import UserError
from qsearch.export.onnx_export import (
    TOLERANCE,
    check_onnxruntime,
    export_onnx,
    onnxruntime_available,
)
from qsearch.export.qpack import EncodedQpack, encode_qpack, load_qpack
from qsearch.utils.io import write_atomic, write_json

FORMATS = ("qpack", "onnx", "both")
VERIFY_BATCH = 8


@torch.no_grad()
def _write_qpack(path: Path, loaded: Checkpoint, images: Tensor) -> EncodedQpack:
    """Write ``model.qpack``; it replaces ``path`` only if it reloads to equal logits."""
    encoded = encode_qpack(loaded.model, loaded.policy, loaded.config)
    expected = loaded.model(images)

    def write_and_verify(tmp: Path) -> None:
        tmp.write_bytes(encoded.data)
        if not torch.equal(load_qpack(tmp).model(images), expected):
            raise RuntimeError(f"{path}: the reloaded model's logits differ from the checkpoint's")

    write_atomic(path, write_and_verify)
    return encoded


def _kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


def _qpack_rows(table: Table, encoded: EncodedQpack) -> dict[str, Any]:
    sizes = encoded.sizes
    overhead = sizes.file / (sizes.payload + sizes.floats + sizes.scales) - 1
    table.add_row("float model", _kib(sizes.float_model), "its fp32 tensors")
    table.add_row("model.qpack", _kib(sizes.file), f"{sizes.ratio:.1f}x smaller than float")
    table.add_row(
        "  packed weights", _kib(sizes.payload), f"bound sum(params*bits)/8 = {_kib(sizes.bound)}"
    )
    table.add_row("  scales + quantizer state", _kib(sizes.scales), "")
    table.add_row("  float tensors", _kib(sizes.floats), "biases, batch norm, float layers")
    table.add_row("  header", f"{sizes.header} B", f"file is {overhead:.2%} over its parts")
    direct = [r.name for r in encoded.layers if r.direct]
    if direct:  # e.g. DoReFa: re-quantizing its output does not give that output back
        table.add_row("  stored as quantizer output", f"{len(direct)} layers", ", ".join(direct))
    return {
        "sizes": sizes.as_dict(),
        "layers": [vars(record) for record in encoded.layers],
    }


def _onnx_rows(table: Table, path: Path, loaded: Checkpoint, images: Tensor) -> dict[str, Any]:
    result = export_onnx(loaded.model, images[:1])
    write_atomic(path, lambda tmp: tmp.write_bytes(result.data))
    table.add_row("model.onnx", _kib(len(result.data)), "QDQ graph, int8/uint8 weight initializers")
    for label, names in (
        ("  fp32 weights (no int grid)", result.float_weights),
        ("  float-op activations", result.float_activations),
    ):
        if names:
            table.add_row(label, f"{len(names)} layers", ", ".join(names))
    report: dict[str, Any] = {
        "bytes": len(result.data),
        "float_weights": result.float_weights,
        "float_activations": result.float_activations,
    }
    if not onnxruntime_available():
        table.add_row("  onnxruntime check", "skipped", "pip install 'qsearch[onnx]'")
        return report
    check = check_onnxruntime(result.data, loaded.model, images)
    table.add_row(
        "  onnxruntime max |diff|",
        f"{check.max_abs_diff:.2e}",
        f"optimizations off: {check.samples_within:.0%} of {len(images)} samples within "
        f"{TOLERANCE:g} x {check.logit_scale:.3g}",
    )
    table.add_row(
        "  ... with optimizations",
        f"{check.max_abs_diff_optimized:.2e}",
        f"argmax agrees on {check.argmax_agreement:.0%}",
    )
    return {**report, "onnxruntime": vars(check)}


def run(cfg: DictConfig) -> None:
    """Export ``checkpoint`` as ``model.qpack`` and/or ``model.onnx``; write export.json."""
    if OmegaConf.is_missing(cfg, "checkpoint"):
        raise UserError("checkpoint must be set (add checkpoint=<file or finetune run dir>)")
    fmt = str(cfg.format)
    if fmt not in FORMATS:
        raise UserError(f"unknown format '{fmt}' (choose from: {', '.join(FORMATS)})")
    loaded = load_checkpoint(
        str(cfg.checkpoint), str(cfg.data_root), str(cfg.cache_dir), kinds=("quantized",)
    )
    loaded.model.cpu().float().eval()
    info = dataset_shape(loaded.config.dataset)
    generator = torch.Generator().manual_seed(int(cfg.seed))
    shape = (VERIFY_BATCH, info.in_channels, info.image_size, info.image_size)
    images = torch.randn(shape, generator=generator)

    out = run_dir()
    table = Table(title=f"export {loaded.policy.model} ({loaded.policy.dataset})")
    for column in ("file", "size", ""):
        table.add_column(column)
    report: dict[str, Any] = {"checkpoint": str(cfg.checkpoint)}
    if fmt in ("qpack", "both"):
        report["qpack"] = _qpack_rows(table, _write_qpack(out / "model.qpack", loaded, images))
    if fmt in ("onnx", "both"):
        report["onnx"] = _onnx_rows(table, out / "model.onnx", loaded, images)
    write_json(out / "export.json", report)
    console.print(table)
    console.print(f"written to {out}")
