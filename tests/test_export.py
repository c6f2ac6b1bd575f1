"""``qsearch export``: bit packing, the qpack file, the ONNX QDQ graph and the command."""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import DictConfig, OmegaConf, open_dict
from torch import Tensor, nn

from qsearch.checkpoint import FLOAT_FORMAT, save_quantized
from qsearch.data import dataset_shape
from qsearch.errors import UserError
from qsearch.export import qpack
from qsearch.export.onnx_export import TOLERANCE, check_onnxruntime, export_onnx
from qsearch.export.packing import pack, packed_size, unpack
from qsearch.export.qpack import decode_qpack, encode_qpack, load_qpack
from qsearch.models import build_model, model_inventory
from qsearch.quant.layers import QuantizerSpec, calibrate, quantize_model
from qsearch.quant.policy import Policy
from tests.conftest import REPO, compose, run_qsearch

QUANTIZERS = sorted(p.stem for p in (REPO / "conf" / "quantizer").glob("*.yaml"))
# per-layer (w_bits, a_bits) of LeNet-5's five layers: a float layer, every kind of range
LENET_MIXED = ((32, 2, 3, 4, 8), (8, 2, 4, 8, 32))
RESNET_MIXED = ((8, *(2, 3, 4) * 6, 8), (8, *(4, 3, 4) * 6, 8))
HAS_ONNX = importlib.util.find_spec("onnx") is not None
requires_onnx = pytest.mark.skipif(not HAS_ONNX, reason="onnx not installed ('onnx' extra)")
requires_onnxruntime = pytest.mark.skipif(
    not HAS_ONNX or importlib.util.find_spec("onnxruntime") is None,
    reason="onnx/onnxruntime not installed ('onnx' extra)",
)


@pytest.mark.parametrize("bits", range(1, 9))
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_pack_round_trip(bits: int, data: st.DataObject) -> None:
    low = data.draw(st.sampled_from([0, -(2 ** (bits - 1))]), label="low")
    values = data.draw(st.lists(st.integers(low, low + 2**bits - 1), max_size=300))
    tensor = torch.tensor(values, dtype=torch.int64)
    packed = pack(tensor, bits, low)
    assert len(packed) == packed_size(len(values), bits) == (len(values) * bits + 7) // 8
    assert torch.equal(unpack(packed, bits, len(values), low), tensor)


def test_pack_rejects_values_out_of_range() -> None:
    with pytest.raises(ValueError, match="cannot take 2 bits"):
        pack(torch.tensor([0, 4]), 2)
    with pytest.raises(ValueError, match=r"1\.\.8 bits"):
        pack(torch.tensor([0]), 9)


@cache
def _configs(model: str, dataset: str, quantizer: str) -> DictConfig:
    cfg = compose("train", f"model={model}", f"dataset={dataset}")
    with open_dict(cfg):
        cfg.quantizer = OmegaConf.load(REPO / "conf" / "quantizer" / f"{quantizer}.yaml")
    return cfg


@cache
def _quantized(
    model_name: str, dataset: str, quantizer: str, bits: tuple[tuple[int, ...], tuple[int, ...]]
) -> tuple[nn.Module, Policy, DictConfig, Tensor]:
    """A calibrated quantized model (random weights), its policy, configs and a batch.

    Shared by the tests (cached): none of them changes it.
    """
    cfg = _configs(model_name, dataset, quantizer)
    info = dataset_shape(cfg.dataset)
    torch.manual_seed(0)
    batch = 8 if model_name == "lenet5" else 4
    images = torch.randn(batch, info.in_channels, info.image_size, info.image_size)
    model = build_model(cfg.model, info)  # a quantizer that does not build fails the test
    names = [layer.name for layer in model_inventory(model, info)]
    policy = Policy.from_bits(model_name, dataset, names, *bits)
    quantize_model(model, policy, QuantizerSpec.from_config(cfg.quantizer))
    calibrate(model, images)
    return model.eval(), policy, cfg, images


def _uniform(model: str, w_bits: int, a_bits: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    layers = 5 if model == "lenet5" else 20
    return (w_bits,) * layers, (a_bits,) * layers


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_qpack_round_trip_is_exact(quantizer: str) -> None:
    model, policy, cfg, images = _quantized("lenet5", "mnist", quantizer, LENET_MIXED)
    encoded = encode_qpack(model, policy, cfg)
    loaded = decode_qpack(encoded.data)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), model(images))
    assert loaded.policy.layers == policy.layers
    assert encoded.layers[0].encoding == "float"  # the 32-bit layer
    assert encoded.layers == loaded.layers
    sizes = encoded.sizes
    assert sizes.file == len(encoded.data)
    assert sizes.file <= 1.02 * (sizes.payload + sizes.floats + sizes.scales)
    assert sizes.scales < 0.1 * sizes.file  # quantizer state (k-means labels too) stays small


def test_non_idempotent_weight_quantizer_is_stored_as_its_output() -> None:
    if "dorefa" not in QUANTIZERS:
        pytest.skip("no conf/quantizer/dorefa.yaml")
    model, policy, cfg, images = _quantized("lenet5", "mnist", "dorefa", _uniform("lenet5", 8, 8))
    encoded = encode_qpack(model, policy, cfg)
    assert any(r.direct for r in encoded.layers)  # tanh normalization: not idempotent
    loaded = decode_qpack(encoded.data)
    with torch.no_grad():
        assert torch.equal(loaded.model(images), model(images))


def test_state_of_another_shape_is_described_in_the_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if "kmeans" not in QUANTIZERS:
        pytest.skip("no conf/quantizer/kmeans.yaml")
    model, policy, cfg, images = _quantized("lenet5", "mnist", "kmeans", LENET_MIXED)
    linked = encode_qpack(model, policy, cfg)
    monkeypatch.setattr(qpack, "_label_keys", lambda *_: [])  # k-means labels stored raw
    raw = encode_qpack(model, policy, cfg)
    assert raw.sizes.scales > linked.sizes.scales + 8 * 2400  # int64 labels, e.g. features.3
    with torch.no_grad():
        assert torch.equal(decode_qpack(raw.data).model(images), model(images))


def test_uninitialized_quantizers_cannot_be_exported() -> None:
    cfg = _configs("lenet5", "mnist", "lsq")
    info = dataset_shape(cfg.dataset)
    model = build_model(cfg.model, info)
    names = [layer.name for layer in model_inventory(model, info)]
    policy = Policy.uniform("lenet5", "mnist", names, 4, 4)
    quantize_model(model, policy, QuantizerSpec.from_config(cfg.quantizer))
    with pytest.raises(UserError, match="never initialized"):
        encode_qpack(model, policy, cfg)


@pytest.mark.parametrize(
    ("model_name", "dataset", "bits"),
    [("lenet5", "mnist", _uniform("lenet5", 2, 2)), ("resnet20", "cifar10", RESNET_MIXED)],
)
def test_qpack_size_is_the_bitwidth_bound(
    model_name: str, dataset: str, bits: tuple[tuple[int, ...], tuple[int, ...]]
) -> None:
    model, policy, cfg, images = _quantized(model_name, dataset, "lsq", bits)
    encoded = encode_qpack(model, policy, cfg)
    sizes = encoded.sizes
    assert sizes.payload - sizes.bound < len(policy.layers)  # < 1 byte of padding per layer
    assert sizes.file <= 1.02 * (sizes.payload + sizes.floats + sizes.scales)
    with torch.no_grad():
        assert torch.equal(decode_qpack(encoded.data).model(images), model(images))
    if model_name == "lenet5":
        float_bytes = sum(
            t.numel() * t.element_size()
            for t in build_model(cfg.model, dataset_shape(cfg.dataset)).state_dict().values()
        )
        assert float_bytes == sizes.float_model
        assert float_bytes / sizes.file >= 14  # 2 bits: ~16x smaller, less biases and header


def test_damaged_qpack_files_are_user_errors(tmp_path: Path) -> None:
    model, policy, cfg, _ = _quantized("lenet5", "mnist", "lsq", _uniform("lenet5", 4, 4))
    data = encode_qpack(model, policy, cfg).data
    flipped = bytearray(data)
    flipped[-100] ^= 0xFF
    cases = {
        "not a qpack file": b"PK\x03\x04" + data[4:],
        "checksum mismatch": bytes(flipped),
        "corrupt qpack header": data[:12] + bytes(20) + data[32:],
        "version 9": data[:5] + b"\x09" + data[6:],
    }
    for message, damaged in cases.items():
        with pytest.raises(UserError, match=message):
            decode_qpack(damaged)
    with pytest.raises(UserError, match="not found"):
        load_qpack(tmp_path / "missing.qpack")


@requires_onnxruntime
@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_onnx_matches_onnxruntime(quantizer: str) -> None:
    model, _, _, images = _quantized("lenet5", "mnist", quantizer, LENET_MIXED)
    check = check_onnxruntime(export_onnx(model, images[:1]).data, model, images)
    assert check.max_abs_diff <= TOLERANCE * check.logit_scale, check


@requires_onnx
def test_onnx_graph_is_qdq_with_narrowed_ranges() -> None:
    import onnx

    model, _, _, images = _quantized("lenet5", "mnist", "lsq", _uniform("lenet5", 4, 4))
    result = export_onnx(model, images[:1])
    assert not result.float_weights and not result.float_activations
    graph = onnx.load_from_string(result.data).graph
    ops = [node.op_type for node in graph.node]
    assert ops.count("QuantizeLinear") == 5 and ops.count("DequantizeLinear") == 10
    assert ops.count("Clip") == 5  # 4-bit ranges inside int8/uint8
    weights = [i for i in graph.initializer if i.name.endswith("weight_quant.q")]
    assert len(weights) == 5 and {i.data_type for i in weights} == {onnx.TensorProto.INT8}
    clip_bounds = {
        tuple(
            onnx.numpy_helper.to_array(n.attribute[0].t).item()
            for n in graph.node
            if n.output[0] in clip.input[1:]
        )
        for clip in graph.node
        if clip.op_type == "Clip"
    }
    assert clip_bounds == {(-8, 7), (0, 15)}  # signed network input, unsigned after ReLU


@requires_onnxruntime
def test_onnx_resnet20_mixed_matches_onnxruntime() -> None:
    model, _, _, images = _quantized("resnet20", "cifar10", "lsq", RESNET_MIXED)
    check = check_onnxruntime(export_onnx(model, images[:1]).data, model, images)
    # 20 layers: a sum within float error of a rounding boundary may move one activation of
    # one sample by a quantization step; the other samples must match
    assert check.samples_within >= 0.75, check
    assert check.argmax_agreement >= 0.75, check


def test_export_command(tmp_path: Path) -> None:
    model, policy, cfg, images = _quantized("lenet5", "mnist", "lsq", LENET_MIXED)
    run = tmp_path / "finetune_run"
    save_quantized(run / "model.pt", model, policy, cfg, {"test_acc": 0.0})
    fmt = "both" if HAS_ONNX else "qpack"
    result = run_qsearch("export", f"checkpoint={run}", f"format={fmt}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    (out,) = (tmp_path / "outputs" / "export").iterdir()
    files = {p.name for p in out.iterdir()}
    assert {"model.qpack", "export.json"} <= files and ("model.onnx" in files) == HAS_ONNX
    assert "model.qpack" in result.stdout and "smaller than float" in result.stdout
    with torch.no_grad():
        assert torch.equal(load_qpack(out / "model.qpack").model(images), model(images))


def test_export_command_user_errors(tmp_path: Path) -> None:
    (tmp_path / "corrupt.pt").write_bytes(b"\x80\x02garbage" * 50)
    torch.save({"format": FLOAT_FORMAT, "state_dict": {}}, tmp_path / "float.pt")
    cases = [
        (["checkpoint=corrupt.pt"], "cannot read checkpoint"),
        (["checkpoint=float.pt"], "is a float checkpoint"),
        ([], "checkpoint must be set"),
    ]
    for args, message in cases:
        result = run_qsearch("export", *args, cwd=tmp_path)
        assert result.returncode == 2, result.stderr
        assert result.stderr.startswith("qsearch: error: ") and message in result.stderr
        assert result.stderr.count("\n") == 1
    assert not list(tmp_path.glob("outputs/export/*"))
