"""Export benchmark: qpack file sizes against the bitwidth bound, and ONNX vs onnxruntime.

    python scripts/bench_export.py

For each case an LSQ-quantized model is written as a qpack file and an ONNX QDQ graph. Its
weights are the cached float checkpoint of ``qsearch train`` where there is one (else
random: sizes do not depend on the values), its quantizers calibrated on 32 test images
(random inputs where the dataset is not prepared).

Sizes: the float model's tensors, the quantized checkpoint (``torch.save``), the qpack file
and its parts, and the bound ``sum(params * bits) / 8``. ONNX: the largest absolute logit
difference between onnxruntime (CPU; graph optimizations off, then on) and the
fake-quantized PyTorch model, on those 32 inputs.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch import Tensor

from _bench import markdown_table, save_json, update_doc_section
from qsearch.checkpoint import save_quantized
from qsearch.config import job_config
from qsearch.data import eval_loader
from qsearch.errors import UserError
from qsearch.export.onnx_export import check_onnxruntime, export_onnx, onnxruntime_available
from qsearch.export.qpack import decode_qpack, encode_qpack
from qsearch.quant.layers import calibrate, quantize_model
from qsearch.quant.policy import Policy
from qsearch.setup import Setup

MIXED = "mixed (8, then 2-3-4 cycling, 8; acts 8-4-8)"
CASES = [  # (model, dataset, policy): uniform bits, or MIXED
    ("lenet5", "mnist", 2),
    ("lenet5", "mnist", 4),
    ("lenet5", "mnist", 8),
    ("resnet20", "cifar10", 2),
    ("resnet20", "cifar10", 4),
    ("resnet20", "cifar10", MIXED),
]


def _config(model: str, dataset: str) -> DictConfig:
    return job_config("finetune", [f"model={model}", f"dataset={dataset}", "quantizer=lsq"])


def _policy(model: str, dataset: str, names: list[str], bits: int | str) -> Policy:
    if isinstance(bits, int):
        return Policy.uniform(model, dataset, names, bits, bits)
    middle = [(2, 3, 4)[i % 3] for i in range(len(names) - 2)]
    w_bits = [8, *middle, 8]
    return Policy.from_bits(model, dataset, names, w_bits, [8, *(4 for _ in middle), 8])


def _load_float_weights(setup: Setup) -> str:
    """Load the cached float checkpoint into ``setup.float_model`` if there is one (never
    train one: sizes do not depend on the weights); say which."""
    return "random" if setup.cached_float_checkpoint() is None else "trained"


def _images(setup: Setup, count: int = 32) -> tuple[Tensor, str]:
    """``count`` normalized test images, or random inputs if the data is not prepared."""
    try:
        data = setup.data
    except UserError:
        info = setup.info
        shape = (count, info.in_channels, info.image_size, info.image_size)
        return torch.randn(shape, generator=torch.Generator().manual_seed(0)), "random"
    images, _ = next(iter(eval_loader(data, "test", batch_size=count)))
    return images.float(), "test images"


def case_row(model_name: str, dataset: str, bits: int | str) -> dict:
    """Sizes of one model + policy as qpack (and checkpoint), and its ONNX check."""
    cfg = _config(model_name, dataset)
    torch.manual_seed(0)  # the weights where no float checkpoint is cached
    setup = Setup.from_config(cfg)
    model = setup.float_model
    weights = _load_float_weights(setup)
    names = [layer.name for layer in setup.inventory]
    policy = _policy(model_name, dataset, names, bits)
    quantize_model(model, policy, setup.spec)
    images, inputs = _images(setup)
    calibrate(model, images)
    model.eval()
    encoded = encode_qpack(model, policy, cfg)
    with torch.no_grad():
        exact = torch.equal(decode_qpack(encoded.data).model(images), model(images))
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = save_quantized(Path(tmp) / "model.pt", model, policy, cfg, {})
        checkpoint_bytes = checkpoint.stat().st_size
    sizes = encoded.sizes
    row = {
        "model": model_name,
        "policy": f"uniform {bits}-bit" if isinstance(bits, int) else bits,
        "weights": weights,
        "inputs": inputs,
        "float_bytes": sizes.float_model,
        "checkpoint_bytes": checkpoint_bytes,
        **{f"qpack_{key}": value for key, value in sizes.as_dict().items()},
        "overhead": sizes.file / (sizes.payload + sizes.floats + sizes.scales) - 1,
        "round_trip_exact": exact,
    }
    if onnxruntime_available():
        result = export_onnx(model, images[:1])
        check = check_onnxruntime(result.data, model, images)
        row |= {"onnx_bytes": len(result.data), **{f"onnx_{k}": v for k, v in vars(check).items()}}
    return row


def report(rows: list[dict]) -> str:
    size_rows = [
        [
            f"{r['model']} {r['policy']}",
            f"{r['float_bytes']:,}",
            f"{r['checkpoint_bytes']:,}",
            f"{r['qpack_file']:,}",
            f"{r['qpack_bound']:,.0f}",
            f"{r['qpack_payload']:,} / {r['qpack_scales']:,} / {r['qpack_floats']:,} / "
            f"{r['qpack_header']}",
            f"{r['overhead']:.2%}",
            f"{r['qpack_ratio']:.1f}x",
            "yes" if r["round_trip_exact"] else "**no**",
        ]
        for r in rows
    ]
    text = [
        "## Export (`python scripts/bench_export.py`)",
        "",
        "Bytes of an LSQ-quantized model: its float tensors, the quantized checkpoint "
        "(`torch.save`, float weights), the qpack file, the bound sum(params x bits)/8 over "
        "the quantized weights, and the qpack parts (packed weights / scales + quantizer "
        "state / float tensors: biases, batch norm / header). Overhead: file vs the sum of "
        "its parts (the header); ratio: float tensors / qpack file. Exact: the reloaded "
        "qpack gives `torch.equal` logits.",
        "",
        markdown_table(
            [
                "model, policy",
                "float",
                "checkpoint",
                "qpack",
                "bound",
                "packed / scales / float / header",
                "overhead",
                "ratio",
                "exact",
            ],
            size_rows,
        ),
    ]
    onnx_rows = [
        [
            f"{r['model']} {r['policy']}",
            f"{r['weights']} / {r['inputs']}",
            f"{r['onnx_bytes']:,}",
            f"{r['onnx_max_abs_diff']:.2e}",
            f"{r['onnx_samples_within']:.0%}",
            f"{r['onnx_max_abs_diff_optimized']:.2e}",
            f"{r['onnx_argmax_agreement']:.0%}",
            f"{r['onnx_logit_scale']:.2f}",
        ]
        for r in rows
        if "onnx_bytes" in r
    ]
    if onnx_rows:
        text += [
            "",
            "ONNX QDQ graph (int8 weights + DequantizeLinear; activations QuantizeLinear -> "
            "Clip -> DequantizeLinear) vs the fake-quantized PyTorch model, on 32 inputs "
            "(test images where the dataset is prepared). Within: samples whose logits all "
            "lie within 1e-5 x max(1, max |logit|) with onnxruntime's optimizations off; the "
            "others have an activation rounded to the neighbouring level (a sum within float "
            "error of a rounding boundary).",
            "",
            markdown_table(
                [
                    "model, policy",
                    "weights / inputs",
                    "onnx bytes",
                    "max diff (opt. off)",
                    "within",
                    "max diff (opt. on)",
                    "argmax agrees",
                    "max logit",
                ],
                onnx_rows,
            ),
        ]
    return "\n".join(text)


def main() -> int:
    rows = [case_row(*case) for case in CASES]
    for row in rows:
        print(row)
    save_json("export", {"cases": rows})
    update_doc_section("export", report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
