"""Hardware cost models: hand-computed LeNet-5 costs, monotonicity, every preset, LUT errors."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsearch.config import config_dir
from qsearch.errors import UserError
from qsearch.hardware import (
    METRICS,
    CostModel,
    build_cost_model,
    cost_table,
    load_preset,
    preset_names,
    rich_cost_table,
)
from qsearch.hardware.bitfusion import BitFusion
from qsearch.hardware.bitops import BitOps
from qsearch.hardware.bitserial import BitSerial
from qsearch.hardware.lut import LookupTable
from qsearch.hardware.size import ModelSize
from qsearch.models.inventory import LayerInfo, layer_inventory
from qsearch.models.lenet import LeNet5
from qsearch.models.mobilenet import MobileNetV2
from qsearch.quant.policy import Policy
from tests.conftest import run_qsearch

LENET = layer_inventory(LeNet5(), (1, 28, 28))
NAMES = [layer.name for layer in LENET]
PRESETS = sorted(p.stem for p in (config_dir() / "hardware").glob("*.yaml"))
# LeNet-5 on 28x28: MACs, weights, biases, input + output activation elements per layer
MACS = [117600, 240000, 48000, 10080, 840]
WEIGHTS = [150, 2400, 48000, 10080, 840]
BIASES = [6, 16, 120, 84, 10]
ACTIVATIONS = [784 + 4704, 1176 + 1600, 400 + 120, 120 + 84, 84 + 10]
# the hand-computed policy: layer i at W[i] weight bits and A[i] activation bits
W, A = [8, 3, 2, 4, 8], [8, 5, 4, 4, 8]
TOY = {"clock_mhz": 1, "bytes_per_cycle": 16, "energy_per_op_pj": 1, "energy_per_byte_pj": 10}


def _policy(w: list[int], a: list[int], inventory: list[LayerInfo] = LENET) -> Policy:
    return Policy.from_bits("m", "d", [layer.name for layer in inventory], w, a)


def _uniform(bits: int, pin: int | None = None) -> Policy:
    return Policy.uniform("m", "d", NAMES, bits, bits, pin_first_last=pin)


@pytest.fixture(scope="module")
def lut_table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LeNet-5 latency table in HAQ's format: MACs x w x a ns, monotone in the bits."""
    bits = np.arange(1, 9)
    table = np.array(MACS)[:, None, None] * bits[None, :, None] * bits[None, None, :] * 1e-9
    path = tmp_path_factory.mktemp("lut") / "lenet5_latency.npy"
    np.save(path, table)
    return path


def _preset(name: str, lut: Path) -> CostModel:
    node = load_preset(name)
    if name == "lut":
        node.path = str(lut)
    return build_cost_model(node)


# --- hand-computed LeNet-5 costs -----------------------------------------------------------

# bytes moved per layer: activations at a bits, weights at w bits, biases at 32 bits
BYTES = [5488 + 150 + 24, 1735 + 900 + 64, 260 + 12000 + 480, 102 + 5040 + 336, 94 + 840 + 40]
MEMORY_CYCLES = [b / 16 for b in BYTES]  # [353.875, 168.6875, 796.25, 342.375, 60.875]


def test_bitops_and_size_hand_computed() -> None:
    policy = _policy(W, A)
    bitops = 117600 * 64 + 240000 * 15 + 48000 * 8 + 10080 * 16 + 840 * 64
    size = 150 + 2400 * 3 / 8 + 48000 * 2 / 8 + 10080 * 4 / 8 + 840 + 236 * 4
    for model in (BitOps(), ModelSize()):
        report = model.cost(LENET, policy)
        assert report.total("bitops") == bitops == 11_725_440
        assert report.total("size") == size == 19_874
        assert report.totals()["latency_s"] is None and report.totals()["energy_j"] is None
    assert BitOps().total(LENET, policy) == bitops
    assert ModelSize().total(LENET, policy) == size


@pytest.mark.parametrize(
    ("model", "ops", "cycles", "bounds"),
    [
        (  # MAC-bits = MACs x w x a; compute = ops / 1024 lanes
            BitSerial(serial="both", lanes=1024, **TOY),
            [117600 * 64, 240000 * 15, 48000 * 8, 10080 * 16, 840 * 64],
            [7350, 3515.625, *MEMORY_CYCLES[2:]],
            "ccmmm",
        ),
        (  # MAC-bits = MACs x w
            BitSerial(serial="weights", lanes=1024, **TOY),
            [117600 * 8, 240000 * 3, 48000 * 2, 10080 * 4, 840 * 8],
            [918.75, 703.125, 796.25, *MEMORY_CYCLES[3:]],
            "ccmmm",
        ),
        (  # bricks = MACs x ceil(w/2) x ceil(a/2); compute = ops / 256 bricks
            BitFusion(bricks=256, **TOY),
            [117600 * 16, 240000 * 2 * 3, 48000 * 1 * 2, 10080 * 4, 840 * 16],
            [7350, 5625, *MEMORY_CYCLES[2:]],
            "ccmmm",
        ),
    ],
    ids=["bitserial-both", "bitserial-weights", "bitfusion"],
)
def test_roofline_models_hand_computed(
    model: CostModel, ops: list[int], cycles: list[float], bounds: str
) -> None:
    report = model.cost(LENET, _policy(W, A))
    assert [layer.latency_cycles for layer in report.layers] == cycles
    assert "".join(layer.bound[0] for layer in report.layers) == bounds  # type: ignore[index]
    assert report.total("latency") == pytest.approx(sum(cycles) * 1e-6)  # 1 MHz
    # 1 pJ per op, 10 pJ per byte
    assert report.total("energy") == pytest.approx((sum(ops) + 10 * sum(BYTES)) * 1e-12)
    assert report.cost == report.total("latency")


def test_lookup_table_hand_computed(lut_table: Path) -> None:
    report = LookupTable(str(lut_table)).cost(LENET, _policy(W, A))
    expected = sum(m * w * a for m, w, a in zip(MACS, W, A, strict=True)) * 1e-9
    assert report.total("latency") == pytest.approx(expected)
    assert report.total("bitops") == 11_725_440
    with pytest.raises(UserError, match="does not compute energy"):
        report.total("energy")


# --- 8-bit vs 4-bit ratios -----------------------------------------------------------------


def _ratio(model: CostModel, metric: str) -> float:
    return model.cost(LENET, _uniform(8)).total(metric) / model.cost(LENET, _uniform(4)).total(
        metric
    )


def test_uniform_8_vs_4_bit_ratios_follow_the_formulas() -> None:
    assert _ratio(BitOps(), "bitops") == 4  # (8 x 8) / (4 x 4)
    weights, biases = sum(WEIGHTS), sum(BIASES) * 4
    assert _ratio(ModelSize(), "size") == (weights + biases) / (weights / 2 + biases)
    fast_memory = {**TOY, "bytes_per_cycle": 1e12}  # every layer compute-bound
    assert _ratio(BitSerial(serial="both", lanes=64, **fast_memory), "latency") == 4
    assert _ratio(BitSerial(serial="weights", lanes=64, **fast_memory), "latency") == 2
    assert _ratio(BitSerial(serial="activations", lanes=64, **fast_memory), "latency") == 2
    assert _ratio(BitFusion(bricks=64, **fast_memory), "latency") == 4  # 4x4 vs 2x2 bricks
    # every layer memory-bound: traffic = activations x a/8 + weights x w/8 + biases x 4
    slow = BitFusion(bricks=1e12, **TOY)
    moved = sum(ACTIVATIONS) + weights
    assert _ratio(slow, "latency") == pytest.approx((moved + biases) / (moved / 2 + biases))
    ops8, ops4 = sum(MACS) * 16, sum(MACS) * 4  # bricks, 1 pJ each; bytes 10 pJ each
    energy8, energy4 = ops8 + 10 * (moved + biases), ops4 + 10 * (moved / 2 + biases)
    assert _ratio(slow, "energy") == pytest.approx(energy8 / energy4)


def test_float_layers_cost_32_bits() -> None:
    model = BitSerial(serial="weights", lanes=1, **{**TOY, "bytes_per_cycle": 1e12})
    report = model.cost(LENET, _policy([32, 8, 8, 8, 8], [32, 8, 8, 8, 8]))
    assert report.layers[0].latency_cycles == 117600 * 32
    assert BitFusion(bricks=1, **TOY).ops_per_mac(32, 32) == 16 * 16


# --- every preset --------------------------------------------------------------------------


def test_presets_listed() -> None:
    assert {"bitops", "size", "lut", "bitserial_edge", "bitserial_cloud"} <= set(PRESETS)
    assert {"bitfusion_edge", "bitfusion_cloud"} <= set(PRESETS)
    assert preset_names() == [name for name in PRESETS if name != "lut"]


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_builds_and_reports(name: str, lut_table: Path) -> None:
    model = _preset(name, lut_table)
    assert model.name == name and model.metric in METRICS
    report = model.cost(LENET, _uniform(4, pin=8))
    assert [layer.name for layer in report.layers] == NAMES
    assert report.cost == report.total(model.metric) > 0
    for metric in model.provides:
        assert 0 < report.total(metric) <= model.cost(LENET, _uniform(8)).total(metric)
    json.dumps(report.as_dict())  # plain data


BITS = st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 32])


@pytest.mark.parametrize("name", PRESETS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_cost_never_rises_when_bits_go_down(
    name: str, lut_table: Path, data: st.DataObject
) -> None:
    bits = st.integers(1, 8) if name == "lut" else BITS  # a measured table stops at 8 bits
    w = data.draw(st.lists(bits, min_size=5, max_size=5))
    a = data.draw(st.lists(bits, min_size=5, max_size=5))
    layer = data.draw(st.integers(0, 4))
    lowered = data.draw(st.sampled_from(["w", "a"]))
    target = w if lowered == "w" else a
    if target[layer] == 1:
        return
    model = _preset(name, lut_table)
    before = model.cost(LENET, _policy(w, a))
    target[layer] = data.draw(st.integers(1, min(target[layer] - 1, 8)))
    after = model.cost(LENET, _policy(w, a))
    for metric in model.provides:
        assert after.total(metric) <= before.total(metric)


# --- edge vs cloud (HAQ: the best policy depends on the hardware) --------------------------

MOBILENET = layer_inventory(MobileNetV2(num_classes=10), (3, 32, 32))
FAMILIES = ["bitserial", "bitfusion"]


def _by_kind(dw: int, dense: int, inventory: list[LayerInfo] = MOBILENET) -> Policy:
    """First/last layer 8 bits, depthwise convs at ``dw``, the other layers at ``dense``."""
    last = len(inventory) - 1
    bits = [
        8 if i in (0, last) else dw if layer.is_depthwise else dense
        for i, layer in enumerate(inventory)
    ]
    return _policy(bits, bits, inventory)


def _bounds(name: str, policy: Policy, select: Callable[[LayerInfo], bool]) -> list[str | None]:
    """What bounds each selected MobileNet-V2 layer's latency under preset ``name``."""
    report = build_cost_model(name).cost(MOBILENET, policy)
    return [row.bound for layer, row in zip(MOBILENET, report.layers, strict=True) if select(layer)]


def _thin(layer: LayerInfo) -> bool:
    return layer.is_depthwise or layer.kind == "linear"


@pytest.mark.parametrize("family", FAMILIES)
def test_edge_is_memory_bound_on_depthwise_and_fc_cloud_is_compute_bound(family: str) -> None:
    for bits in (8, 4):
        policy = _by_kind(bits, bits)
        assert set(_bounds(f"{family}_edge", policy, _thin)) == {"memory"}
        assert set(_bounds(f"{family}_cloud", policy, lambda layer: True)) == {"compute"}
    dense = _bounds(f"{family}_edge", _by_kind(8, 8), lambda layer: not _thin(layer))
    assert dense[0] == "compute" and dense.count("compute") > len(dense) / 2  # stem, most 1x1


@pytest.mark.parametrize("family", FAMILIES)
def test_edge_and_cloud_rank_two_policies_differently(family: str) -> None:
    more_on_depthwise, more_on_dense = _by_kind(dw=8, dense=4), _by_kind(dw=2, dense=5)
    for hardware, cheaper in (("edge", more_on_dense), ("cloud", more_on_depthwise)):
        model = build_cost_model(f"{family}_{hardware}")
        costs = {
            p.key(): model.cost(MOBILENET, p).total("latency")
            for p in (more_on_depthwise, more_on_dense)
        }
        assert min(costs, key=costs.__getitem__) == cheaper.key(), hardware


# --- cost table ----------------------------------------------------------------------------


def test_cost_table_is_relative_to_pinned_uniform_8_bit() -> None:
    rows = cost_table(LENET, _uniform(4, pin=8), ["bitops", "bitfusion_edge"])
    assert [row.preset for row in rows] == ["bitops", "bitfusion_edge"]
    bitops = rows[0]
    pinned = 117600 * 64 + 840 * 64
    middle = 240000 + 48000 + 10080
    assert bitops.ratio("bitops") == (pinned + middle * 16) / (pinned + middle * 64)
    assert bitops.ratio("latency") is None and rows[1].ratio("latency") is not None
    assert cost_table(LENET, _uniform(8, pin=8))[0].ratio("size") == 1
    assert {row.preset for row in cost_table(LENET, _uniform(8))} == set(preset_names())
    assert rich_cost_table(rows, "t", primary="bitops").row_count == 2


# --- bad input: one-line UserErrors --------------------------------------------------------


def _write_csv(
    path: Path, rows: list[str], header: str = "layer,w_bits,a_bits,latency,energy"
) -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def _full_csv_rows(skip: str | None = None) -> list[str]:
    return [
        f"{name},{w},{a},{1e-6 * w * a},{2e-6 * w * a}"
        for name in NAMES
        if name != skip
        for w in range(1, 9)
        for a in range(1, 9)
    ]


def test_csv_table_gives_latency_and_energy(tmp_path: Path) -> None:
    model = LookupTable(_write_csv(tmp_path / "t.csv", _full_csv_rows()), metric="energy")
    report = model.cost(LENET, _uniform(4))
    assert report.total("latency") == pytest.approx(5 * 16e-6)
    assert report.cost == report.total("energy") == pytest.approx(5 * 32e-6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: str(p / "none.npy"), "lookup table not found"),
        (lambda p: _npy(p, np.ones((5, 8))), r"must be a numeric \[layers, w_bits, a_bits\] array"),
        (lambda p: _npy(p, np.full((5, 8, 8), np.nan)), "NaN"),
        (lambda p: _write_csv(p / "t.csv", ["x,1,1,1,1"], "layer,bits,cost"), "needs a header"),
        (lambda p: _write_csv(p / "t.csv", ["features.0,8,8,fast,1"]), "line 2"),
        (lambda p: _write_csv(p / "t.txt", []), "must be a .npy or .csv"),
    ],
    ids=["missing", "2d", "nan", "header", "number", "suffix"],
)
def test_unreadable_tables_are_one_line_errors(
    make: Callable[[Path], str], message: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=message) as info:
        LookupTable(make(tmp_path))
    assert "\n" not in str(info.value)


def _npy(folder: Path, array: np.ndarray) -> str:
    np.save(folder / "t.npy", array)
    return str(folder / "t.npy")


@pytest.mark.parametrize(
    ("make", "policy", "message"),
    [
        (lambda p: _npy(p, np.ones((4, 8, 8))), _uniform(4), "has 4 layers, the model has 5"),
        (lambda p: _npy(p, np.ones((5, 8, 8))), _uniform(32), "no entry for layer 'features.0'"),
        (
            lambda p: _write_csv(p / "t.csv", [*_full_csv_rows(), "conv9,8,8,1,1"]),
            _uniform(4),
            "names layer 'conv9', which the model does not have",
        ),
        (
            lambda p: _write_csv(p / "t.csv", _full_csv_rows(skip="classifier.5")),
            _uniform(4),
            "no rows for layer 'classifier.5'",
        ),
        (
            lambda p: _write_csv(p / "t.csv", _full_csv_rows()),
            _policy([8, 8, 32, 8, 8], [8] * 5),
            "no entry for layer 'classifier.1' at w_bits=32, a_bits=8",
        ),
    ],
    ids=["layer-count", "bits-beyond-table", "unknown-layer", "missing-layer", "missing-entry"],
)
def test_tables_that_do_not_fit_the_model_are_one_line_errors(
    make: Callable[[Path], str], policy: Policy, message: str, tmp_path: Path
) -> None:
    with pytest.raises(UserError, match=message) as info:
        LookupTable(make(tmp_path)).cost(LENET, policy)
    assert "\n" not in str(info.value)


def test_bad_presets_are_one_line_errors(lut_table: Path) -> None:
    with pytest.raises(UserError, match="'bitops' cannot optimize 'latency'"):
        BitOps(metric="latency")
    with pytest.raises(UserError, match="cannot optimize 'energy'"):
        LookupTable(str(lut_table), quantity="latency", metric="energy")
    with pytest.raises(UserError, match="serial must be one of"):
        BitSerial(serial="neither", lanes=1, **TOY)
    with pytest.raises(UserError, match="bytes_per_cycle must be positive"):
        BitFusion(bricks=1, **{**TOY, "bytes_per_cycle": 0})
    with pytest.raises(UserError, match="unknown hardware 'tpu'"):
        build_cost_model("tpu")
    with pytest.raises(UserError, match=r"hardware\.path must be set"):
        build_cost_model("lut")
    with pytest.raises(UserError, match=r"no bits for layer 'features\.0'"):
        BitOps().cost(LENET, Policy("m", "d", {}))


# --- qsearch cost --------------------------------------------------------------------------


def _cost(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_qsearch("cost", "model=lenet5", "dataset=mnist", *args, cwd=cwd, timeout=120)


def test_cost_command_prints_every_preset_and_writes_json(tmp_path: Path) -> None:
    result = _cost("policy=uniform_4", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "bitserial_edge *" in result.stdout and "per layer under bitserial_edge" in result.stdout
    (path,) = tmp_path.glob("outputs/cost/*/cost.json")
    data = json.loads(path.read_text())
    assert [row["preset"] for row in data["presets"]] == preset_names()
    bitops = next(row for row in data["presets"] if row["preset"] == "bitops")
    assert bitops["ratio_vs_uniform8"]["bitops"] == pytest.approx(
        (117600 * 64 + 840 * 64 + (240000 + 48000 + 10080) * 16)
        / (117600 * 64 + 840 * 64 + (240000 + 48000 + 10080) * 64)
    )


def test_cost_command_reads_a_lut_and_rejects_a_wrong_one(tmp_path: Path, lut_table: Path) -> None:
    ok = run_qsearch(
        "cost",
        "model=lenet5",
        "dataset=mnist",
        "w_bits=4",
        "hardware=lut",
        f"hardware.path={lut_table}",
        "presets=[bitops]",
        cwd=tmp_path,
    )
    assert ok.returncode == 0, ok.stderr
    (path,) = tmp_path.glob("outputs/cost/*/cost.json")
    assert [row["preset"] for row in json.loads(path.read_text())["presets"]] == ["lut", "bitops"]
    wrong = _npy(tmp_path, np.ones((3, 8, 8)))
    bad = run_qsearch(
        "cost",
        "model=lenet5",
        "dataset=mnist",
        "w_bits=4",
        "hardware=lut",
        f"hardware.path={wrong}",
        cwd=tmp_path,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip() == f"qsearch: error: lookup table {wrong} has 3 layers, the model has 5"
    )
    assert len(list(tmp_path.glob("outputs/cost/*"))) == 1  # no run dir left by the failure
