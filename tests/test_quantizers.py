"""Every quantizer config in conf/quantizer, for both roles and every bitwidth it supports.

Properties (hypothesis): at most 2^b levels, on the quantizer's own grid or codebook;
quantizing twice changes nothing; zero stays exactly zero where the class says so. Then
the gradients of the papers on hand-made inputs, positivity of learned ranges under
adversarial updates, config errors, 32 bits = identity, quantized layers under bf16
autocast, and state-dict round trips. A new YAML in conf/quantizer is tested automatically.
"""

from __future__ import annotations

import math
from functools import cache

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf
from torch import Tensor, nn

from qsearch.config import config_dir
from qsearch.errors import UserError
from qsearch.quant.base import Quantizer, Role
from qsearch.quant.dorefa import DorefaQuantizer
from qsearch.quant.kmeans import KmeansQuantizer
from qsearch.quant.layers import QuantizerSpec, calibrate, quantize_model, set_policy_bits
from qsearch.quant.linear_kl import LinearKlQuantizer
from qsearch.quant.lsq import LsqQuantizer
from qsearch.quant.lsq_plus import LsqPlusQuantizer
from qsearch.quant.pact import PactQuantizer
from qsearch.quant.policy import FLOAT_BITS, LayerBits, Policy
from qsearch.quant.wrpn import WrpnQuantizer

OPTIONS = sorted(p.stem for p in (config_dir() / "quantizer").glob("*.yaml"))
ROLES: tuple[Role, Role] = ("weight", "activation")
CHANNELS = 4
# learned ranges that must stay > 0 whatever the optimizer does
POSITIVE = ("step", "alpha")
# DoReFa's weight transform renormalizes by max|tanh(w)|, so it is not a projection: its
# output is on its grid (checked), but quantizing that output again moves it
NOT_IDEMPOTENT = {("dorefa", "weight")}


@cache
def spec(option: str) -> QuantizerSpec:
    cfg = OmegaConf.load(config_dir() / "quantizer" / f"{option}.yaml")
    assert cfg.name == option
    return QuantizerSpec.from_config(cfg)


def make(option: str, role: Role, bits: int) -> Quantizer:
    return spec(option).make(role, bits, channels=CHANNELS)


def supports(option: str, role: Role, bits: int) -> bool:
    try:
        make(option, role, bits)
    except UserError:
        return False
    return True


def supported_bits(option: str, role: Role) -> list[int]:
    return [b for b in range(1, 9) if supports(option, role, b)]


CASES = [
    pytest.param(option, role, bits, id=f"{option}-{role}-{bits}")
    for option in OPTIONS
    for role in ROLES
    for bits in supported_bits(option, role)
]


def zero_must_be_exact(q: Quantizer) -> bool:
    """``zero_exact`` holds for signed weights, unsigned activations, signed ones >= 2 bits."""
    return q.role in type(q).zero_exact and (q.role == "weight" or not q.signed or q.bits >= 2)


@st.composite
def inputs(draw: st.DrawFn, role: Role) -> Tensor:
    """A small tensor: weights ``(CHANNELS, k)`` signed; activations ``(2, k)``, either sign."""
    rows = CHANNELS if role == "weight" else 2
    cols = draw(st.integers(2, 10))
    values = st.floats(-4, 4, allow_nan=False, allow_subnormal=False, width=32)
    x = torch.tensor(draw(st.lists(values, min_size=rows * cols, max_size=rows * cols)))
    x = x.reshape(rows, cols)
    if role == "activation" and draw(st.booleans()):
        x = x.abs()  # after a ReLU
    x[0, 0] = 0.0
    return x


def assert_at_most_levels(q: Quantizer, y: Tensor) -> None:
    """``y`` takes at most ``2^b`` values (per channel for per-channel grids), on its grid."""
    limit = 2**q.bits
    grid, codebook = q.grid(), q.codebook()
    assert (grid is None) != (codebook is None), "describe the values by a grid or a codebook"
    if grid is not None:
        assert grid.qmax - grid.qmin + 1 <= limit
        assert bool((grid.scale > 0).all())
        assert torch.equal(grid.from_int(grid.to_int(y)), y)
        groups = y.flatten(1) if grid.scale.numel() > 1 else y.reshape(1, -1)
    else:
        centroids, labels = codebook
        assert centroids.numel() == limit and labels.shape == y.shape
        assert torch.equal(centroids[labels], y)
        groups = y.reshape(1, -1)
    assert all(row.unique().numel() <= limit for row in groups)


@pytest.mark.parametrize(("option", "role", "bits"), CASES)
@settings(max_examples=6, deadline=None)
@given(data=st.data())
def test_levels_idempotence_and_zero(
    option: str, role: Role, bits: int, data: st.DataObject
) -> None:
    x = data.draw(inputs(role))
    q = make(option, role, bits)
    y = q(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert_at_most_levels(q, y)
    if (q.name, role) not in NOT_IDEMPOTENT:
        assert torch.equal(q(y), y)
    if zero_must_be_exact(q):
        assert y[0, 0].item() == 0.0


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("role", ROLES)
def test_32_bits_is_identity(option: str, role: Role) -> None:
    q = make(option, role, FLOAT_BITS)
    x = torch.randn(CHANNELS, 5)
    assert torch.equal(q(x), x)
    assert q.grid() is None and q.codebook() is None


@pytest.mark.parametrize("option", OPTIONS)
@pytest.mark.parametrize("role", ROLES)
def test_every_bitwidth_from_2_and_clear_errors_outside(option: str, role: Role) -> None:
    bits = supported_bits(option, role)
    assert bits == list(range(bits[0], 9)) and bits[0] <= 2
    for bad in [0, 9, 16, 33] + ([bits[0] - 1] if bits[0] > 1 else []):
        with pytest.raises(UserError, match=rf"{role} bits .*not {bad}$") as info:
            make(option, role, bad)
        assert "\n" not in str(info.value)
    q = make(option, role, 4)
    with pytest.raises(UserError, match=f"quantizer {q.name}"):
        q.set_bits(9)


@pytest.mark.parametrize(
    ("cls", "role"),
    [(PactQuantizer, "weight"), (LinearKlQuantizer, "activation"), (KmeansQuantizer, "activation")],
)
def test_unsupported_role_is_a_user_error(cls: type[Quantizer], role: Role) -> None:
    with pytest.raises(UserError, match=f"quantizer {cls.name} does not quantize {role}s"):
        cls(bits=4, role=role)


def _step_grad(q: LsqQuantizer, x: Tensor, step: list[float], upstream: Tensor) -> Tensor:
    q(x)  # initialize, then set the step by hand
    q.step.data = torch.tensor(step)
    (q(x) * upstream).sum().backward()
    return q.step.grad


def test_lsq_step_gradient_matches_the_formula_per_tensor() -> None:
    # 2-bit signed: Qn = 2, Qp = 1, s = 1; v/s below, inside x3, above the range
    q = LsqQuantizer(2, "weight")
    v = torch.tensor([-3.0, -0.6, 0.2, 0.9, 5.0])
    g = 1 / math.sqrt(5 * 1)
    grad = _step_grad(q, v, [1.0], torch.ones(5))
    assert grad.item() == pytest.approx(g * (-2 - 0.4 - 0.2 + 0.1 + 1), abs=1e-6)
    q.step.grad = None  # each element weighted differently: the formula holds elementwise
    grad = _step_grad(q, v, [1.0], torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert grad.item() == pytest.approx(g * (-2 - 0.8 - 0.6 + 0.4 + 5), abs=1e-6)


def test_lsq_step_gradient_matches_the_formula_for_activations() -> None:
    # 2-bit unsigned: Qn = 0, Qp = 3, s = 1, 4 features per sample
    q = LsqQuantizer(2, "activation", signed=False)
    x = torch.tensor([[-1.0, 1.3, 2.6, 7.0]])
    grad = _step_grad(q, x, [1.0], torch.ones(1, 4))
    assert grad.item() == pytest.approx((0 - 0.3 + 0.4 + 3) / math.sqrt(4 * 3), abs=1e-6)


def test_lsq_step_gradient_matches_the_formula_per_channel() -> None:
    # 3-bit signed: Qn = 4, Qp = 3; g = 1 / sqrt(3 weights per channel * 3)
    q = LsqQuantizer(3, "weight", channels=2, per_channel=True)
    w = torch.tensor([[-5.0, 0.7, 4.2], [0.3, -0.8, 1.9]])
    grad = _step_grad(q, w, [1.0, 0.5], torch.ones(2, 3))
    # channel 0 (s = 1): -4, -0.7 + 1, 3; channel 1 (s = 0.5): v/s = 0.6, -1.6, 3.8 (above)
    expected = torch.tensor([-4 + 0.3 + 3, (-0.6 + 1) + (1.6 - 2) + 3]) / 3
    assert torch.allclose(grad, expected, atol=1e-6)


def _quant_mse(x: Tensor, step: Tensor, qn: int, qp: int) -> Tensor:
    """Quantization MSE of ``x`` (rows: channels) at each channel's ``step``."""
    s = step.view(-1, 1)
    return (torch.round(x / s).clamp(-qn, qp) * s - x).pow(2).mean(1)


def test_lsq_mse_init_picks_the_least_error_candidate_for_sparse_activations() -> None:
    """Post-ReLU activations with most values at zero: the paper's step (from the small
    mean) clips the long tail; the MSE step is the best of the 57 candidates and larger."""
    torch.manual_seed(0)
    x = torch.relu(torch.randn(64, 256) * 2.0 - 1.5)  # ~77 % zeros
    paper, mse = (
        LsqQuantizer(2, "activation", signed=False),
        LsqQuantizer(2, "activation", signed=False, step_init="mse"),
    )
    paper(x), mse(x)
    candidates = torch.linspace(0.2, 3.0, 57) * paper.step.detach()
    errors = _quant_mse(x.reshape(1, -1).expand(57, -1), candidates, 0, 3)
    assert mse.step.item() == pytest.approx(candidates[errors.argmin()].item(), rel=1e-6)
    assert mse.step.item() > paper.step.item()
    step_error = _quant_mse(x.reshape(1, -1), mse.step.detach(), 0, 3)
    assert step_error.item() < 0.8 * _quant_mse(x.reshape(1, -1), paper.step.detach(), 0, 3).item()


def test_lsq_mse_init_per_channel_and_a_bad_init_name() -> None:
    torch.manual_seed(1)
    w = torch.randn(3, 50) * torch.tensor([[0.1], [1.0], [5.0]])
    q = LsqQuantizer(3, "weight", channels=3, per_channel=True, step_init="mse")
    paper = LsqQuantizer(3, "weight", channels=3, per_channel=True)
    q(w), paper(w)
    for channel in range(3):  # each channel's step is its own best candidate
        candidates = torch.linspace(0.2, 3.0, 57) * paper.step.detach()[channel]
        rows = w[channel].expand(57, -1)
        errors = _quant_mse(rows, candidates, 4, 3)
        assert q.step[channel].item() == pytest.approx(candidates[errors.argmin()].item(), rel=1e-6)
    with pytest.raises(ValueError, match="LSQ step_init must be one of lsq, mse, got 'max'"):
        LsqQuantizer(3, "weight", step_init="max")


def test_lsq_plus_offset_and_step_gradients() -> None:
    # 2-bit unsigned grid with offset: s = 1, beta = -1, (x - beta)/s = -2, 0.8, 1.7, 5
    q = LsqPlusQuantizer(2, "activation")
    x = torch.tensor([[-3.0, -0.2, 0.7, 4.0]])
    q(x)
    q.step.data, q.beta.data = torch.tensor([1.0]), torch.tensor([-1.0])
    y = q(x)
    assert torch.allclose(y, torch.tensor([[-1.0, 0.0, 1.0, 2.0]]))
    y.sum().backward()
    g = 1 / math.sqrt(4 * 3)
    assert q.step.grad.item() == pytest.approx(g * (0 + 0.2 + 0.3 + 3), abs=1e-6)
    assert q.beta.grad.item() == pytest.approx(g * (1 + 0 + 0 + 1), abs=1e-6)


def test_lsq_plus_weight_init() -> None:
    w = torch.tensor([[1.0, 2.0, 3.0, 6.0]])  # mu = 3, sigma = sqrt(3.5)
    q = LsqPlusQuantizer(3, "weight")
    q(w)
    assert q.step.item() == pytest.approx((3 + 3 * math.sqrt(3.5)) / 4, rel=1e-6)


@pytest.mark.parametrize(("signed", "expected"), [(False, 1 + 1), (True, 2 - 1)])
def test_pact_alpha_gradient_is_one_above_the_clip(signed: bool, expected: int) -> None:
    q = PactQuantizer(2, "activation", signed=signed, init=2.0)
    x = torch.tensor([[-3.0, -1.0, 0.5, 2.0, 3.0]])
    y = q(x)
    y.sum().backward()
    # unsigned: x >= alpha at 2.0 and 3.0; signed adds -1 for x <= -alpha (-3.0)
    assert q.alpha.grad.item() == expected
    assert y.min().item() == (-2.0 if signed else 0.0) and y.max().item() == 2.0


def test_wrpn_and_dorefa_on_hand_made_weights() -> None:
    w = torch.tensor([-1.5, -0.4, 0.1, 0.45, 0.9])
    wrpn = WrpnQuantizer(3, "weight")(w)  # n = 3: round([-3, -1.2, 0.3, 1.35, 2.7]) / 3
    assert torch.allclose(wrpn, torch.tensor([-3.0, -1.0, 0.0, 1.0, 3.0]) / 3)
    binary = DorefaQuantizer(1, "weight")(torch.tensor([-2.0, 0.0, 1.0, 3.0]))
    assert torch.equal(binary, torch.tensor([-1.5, 1.5, 1.5, 1.5]))  # sign(w) * E|w|
    # tanh(w) / (2 max|tanh w|) + 1/2 = [0, 0.29, 0.555, 0.733, 0.896]; x3, round: 0 1 2 2 3
    two = DorefaQuantizer(2, "weight")(w)
    assert torch.allclose(two, torch.tensor([0.0, 1.0, 2.0, 2.0, 3.0]) * 2 / 3 - 1)


def test_linear_kl_clips_below_5_bits_only() -> None:
    w = torch.randn(4000, generator=torch.Generator().manual_seed(0))
    w[:3] = torch.tensor([9.0, -8.0, 7.0])  # outliers
    for bits, clipped in ((2, True), (4, True), (5, False), (8, False)):
        q = LinearKlQuantizer(bits, "weight")
        q(w)
        if clipped:
            assert q.clip.item() < 8.0
        else:
            assert q.clip.item() == pytest.approx(9.0)


def _positive_cases() -> list[tuple[str, Role]]:
    return [
        (option, role)
        for option in OPTIONS
        for role in ROLES
        if any(name in POSITIVE for name, _ in make(option, role, 4).named_parameters())
    ]


@pytest.mark.parametrize(("option", "role"), _positive_cases())
@settings(max_examples=10, deadline=None)
@given(
    bits=st.integers(2, 8),
    push=st.lists(st.floats(-1e9, 1e9, allow_nan=False), min_size=3, max_size=3),
    lr=st.floats(1e-3, 1e3),
)
def test_learned_ranges_stay_positive(
    option: str, role: Role, bits: int, push: list[float], lr: float
) -> None:
    q = make(option, role, bits)
    x = torch.randn(CHANNELS, 6, generator=torch.Generator().manual_seed(bits))
    opt = torch.optim.SGD(q.parameters(), lr=lr)
    for adversarial in push:
        q(x).square().sum().backward()
        for name, p in q.named_parameters():
            if name in POSITIVE:
                p.grad.fill_(adversarial)
        opt.step()
        opt.zero_grad()
        y = q(x)
        assert torch.isfinite(y).all()
        for name, p in q.named_parameters():
            if name in POSITIVE:
                assert bool((p > 0).all()), f"{name} = {p.tolist()}"
        assert bool((q.grid().scale > 0).all())


def _net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(64, 3)
    )


def _policy(option: str, bits: int) -> Policy:
    w_bits = max(bits, supported_bits(option, "weight")[0])
    a_bits = max(bits, supported_bits(option, "activation")[0])
    names = ["0", "2", "4"]
    return Policy("net", "toy", {name: LayerBits(w_bits, a_bits) for name in names})


@pytest.mark.parametrize("bits", [1, 2, 4, 8])
@pytest.mark.parametrize("option", OPTIONS)
def test_quantized_layers_train_under_bf16_autocast(option: str, bits: int) -> None:
    torch.manual_seed(0)
    model = quantize_model(_net(), _policy(option, bits), spec(option))
    images = torch.randn(4, 3, 8, 8)  # signed: the first layer's input grid is signed
    calibrate(model, images)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(images)
    loss = nn.functional.cross_entropy(out.float(), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for layer in (model[0], model[2], model[4]):
        for q in (layer.weight_quant, layer.act_quant):
            assert all(p.grad is not None for p in q.parameters()), q


@pytest.mark.parametrize("option", OPTIONS)
def test_state_dict_round_trip_and_new_bits(option: str) -> None:
    policy = _policy(option, 2)
    torch.manual_seed(0)
    trained = quantize_model(_net(), policy, spec(option))
    images = torch.randn(4, 3, 8, 8)
    calibrate(trained, images)
    opt = torch.optim.SGD(trained.parameters(), lr=0.1)
    trained(images).sum().backward()
    opt.step()
    torch.manual_seed(1)
    loaded = quantize_model(_net(), policy, spec(option))
    loaded.load_state_dict(trained.state_dict())
    trained.eval()
    loaded.eval()
    assert torch.equal(loaded(images), trained(images))

    set_policy_bits(loaded, _policy(option, 3))
    calibrate(loaded, images)
    q = loaded[2].weight_quant
    assert_at_most_levels(q, q(loaded[2].weight))


def test_kmeans_centroids_get_the_sum_of_their_weights_gradients() -> None:
    w = torch.randn(8, 5, generator=torch.Generator().manual_seed(0))
    q = KmeansQuantizer(2, "weight")
    y = q(w)
    centroids, labels = q.codebook()
    distance = (w.unsqueeze(-1) - centroids).abs()
    assert torch.equal(
        distance.gather(-1, labels.unsqueeze(-1)).squeeze(-1), distance.min(-1).values
    )
    upstream = torch.randn(8, 5, generator=torch.Generator().manual_seed(1))
    (y * upstream).sum().backward()
    expected = torch.stack([upstream[labels == j].sum() for j in range(4)])
    assert torch.allclose(q.centroids.grad, expected)


def test_lsq_bf16_activations_quantize_on_the_fp32_grid() -> None:
    """bf16 input: the grid is computed in fp32 and the levels come back in bf16."""
    q = LsqQuantizer(3, "activation", signed=False)
    x = torch.linspace(0.0, 2.0, 64)
    q(x)  # initializes the step from fp32 data
    out = q(x.bfloat16())
    assert out.dtype == torch.bfloat16
    expected = q(x).detach().bfloat16()
    torch.testing.assert_close(out.detach(), expected, rtol=0, atol=0)


@pytest.mark.slow
def test_compiled_fake_quant_matches_eager_values_and_gradients() -> None:
    """``runtime.compile=true`` changes speed only: same outputs, same LSQ gradients."""
    from qsearch.quant.kernels import set_compile

    results = []
    for compiled in (False, True):
        set_compile(compiled)
        try:
            torch.manual_seed(0)
            q = LsqQuantizer(4, "activation", signed=True)
            x = torch.randn(8, 4, 5, 5, requires_grad=True)
            out = q(x)
            (out * torch.arange(out.numel()).view_as(out)).sum().backward()
            results.append((out.detach(), x.grad.clone(), q.step.grad.clone()))
        finally:
            set_compile(False)
    for eager, compiled in zip(*results, strict=True):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)


@settings(max_examples=40, deadline=None)
@given(
    bits=st.integers(2, 8),
    signed=st.booleans(),
    per_channel=st.booleans(),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
)
def test_lsq_evaluation_path_equals_the_training_path_bitwise(
    bits: int, signed: bool, per_channel: bool, seed: int, dtype: torch.dtype
) -> None:
    """Under ``no_grad`` the fake-quantizer runs in place on one buffer (faster); its values
    must equal the autograd path's exactly, for both roles, per tensor and per channel,
    including inputs on the half-way points between levels."""
    torch.manual_seed(seed)
    role: Role = "weight" if per_channel else "activation"
    q = LsqQuantizer(bits, role, signed=signed, channels=6, per_channel=per_channel)
    x = torch.randn(6, 3, 4, 4) * 3
    q(x)  # initializes the step
    halfway = (torch.arange(-8, 8).float() + 0.5) * q.step.detach().flatten()[0]
    x.view(-1)[:16] = halfway
    x = x.to(dtype)
    before = x.clone()
    trained = q(x.clone().requires_grad_(True)).detach()
    with torch.no_grad():
        evaluated = q(x)
    assert evaluated.dtype == trained.dtype == dtype
    torch.testing.assert_close(evaluated, trained, rtol=0, atol=0)
    assert torch.equal(x, before)  # the input itself is not modified in place
