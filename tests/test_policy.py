"""Policies: uniform construction, YAML round trip, validation against a model."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qsearch.errors import UserError
from qsearch.models.inventory import layer_inventory
from qsearch.models.lenet import LeNet5
from qsearch.quant.policy import Policy, parse_uniform, resolve_policy

INVENTORY = layer_inventory(LeNet5(), (1, 28, 28))
NAMES = [layer.name for layer in INVENTORY]


def _resolve(**kwargs: object) -> Policy:
    args = {"policy": None, "w_bits": None, "a_bits": None, "pin_first_last": 8} | kwargs
    return resolve_policy(
        args["policy"],
        args["w_bits"],
        args["a_bits"],
        model="lenet5",
        dataset="mnist",
        inventory=INVENTORY,
        pin_first_last=args["pin_first_last"],
    )


def test_uniform_pins_first_and_last_layer() -> None:
    policy = Policy.uniform("lenet5", "mnist", NAMES, 2, 3, pin_first_last=8)
    assert policy.w_bits == [8, 2, 2, 2, 8] and policy.a_bits == [8, 3, 3, 3, 8]
    assert policy.key() == "8/8 2/3 2/3 2/3 8/8"
    assert Policy.uniform("lenet5", "mnist", NAMES, 4, 4).w_bits == [4] * 5


def test_average_bits_hand_computed() -> None:
    policy = Policy.uniform("lenet5", "mnist", NAMES, 2, 4, pin_first_last=8)
    bits = policy.average_bits(INVENTORY)
    assert bits["w_mean"] == pytest.approx((8 + 2 + 2 + 2 + 8) / 5)
    assert bits["a_mean"] == pytest.approx((8 + 4 + 4 + 4 + 8) / 5)
    weights = [150, 2400, 48000, 10080, 840]
    expected = (150 * 8 + (2400 + 48000 + 10080) * 2 + 840 * 8) / sum(weights)
    assert bits["w_per_param"] == pytest.approx(expected)


@settings(max_examples=30, deadline=None)
@given(
    w=st.lists(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 32]), min_size=5, max_size=5),
    a=st.lists(st.sampled_from([1, 2, 3, 4, 5, 6, 7, 8, 32]), min_size=5, max_size=5),
)
def test_yaml_round_trip(
    tmp_path_factory: pytest.TempPathFactory, w: list[int], a: list[int]
) -> None:
    policy = Policy.from_bits("lenet5", "mnist", NAMES, w, a)
    policy.metadata["accuracy"] = 98.5
    path = policy.save(tmp_path_factory.mktemp("p") / "policy.yaml", comment="test")
    loaded = Policy.load(path)
    assert loaded.layers == policy.layers and loaded.model == "lenet5"
    assert loaded.metadata["accuracy"] == 98.5 and "qsearch_version" in loaded.metadata
    assert path.read_text().startswith("# test\n")


def test_policy_file_is_human_editable(tmp_path: Path) -> None:
    path = Policy.uniform("lenet5", "mnist", NAMES, 4, 4).save(tmp_path / "policy.yaml")
    text = path.read_text().replace("features.3: {w_bits: 4", "features.3: {w_bits: 3")
    path.write_text(text)
    assert Policy.load(tmp_path).layers["features.3"].w_bits == 3  # a run dir works too


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: setattr(p, "model", "resnet20"), "policy is for model 'resnet20', not 'lenet5'"),
        (lambda p: p.layers.pop("features.3"), "no bits for layer 'features.3'"),
        (lambda p: p.layers.update(bogus=p.layers["features.0"]), "names layer 'bogus'"),
        (
            lambda p: p.layers.update({"features.0": type(p.layers["features.0"])(9, 8)}),
            r"layer 'features.0': w_bits=9 is out of range \(allowed: 1..8 or 32 for float\)",
        ),
        (
            lambda p: p.layers.update({"classifier.1": type(p.layers["features.0"])(4, 0)}),
            "a_bits=0 is out of range",
        ),
    ],
)
def test_validation_names_the_problem(edit, message: str) -> None:
    policy = Policy.uniform("lenet5", "mnist", NAMES, 4, 4)
    edit(policy)
    with pytest.raises(UserError, match=message) as info:
        policy.validate(INVENTORY, "lenet5")
    assert "\n" not in str(info.value)


def test_validation_restores_forward_order() -> None:
    policy = Policy.uniform("lenet5", "mnist", list(reversed(NAMES)), 4, 4)
    assert list(policy.validate(INVENTORY, "lenet5").layers) == NAMES


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("just a string", "is not a qsearch policy"),
        ("format: qsearch-policy/1\nmodel: lenet5\n", "is malformed"),
        (
            "format: qsearch-policy/1\nmodel: x\ndataset: y\nlayers: {a: {w_bits: two}}\n",
            "is malformed",
        ),
        ("layers: [unclosed", "is not valid YAML"),
    ],
)
def test_bad_policy_files(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message):
        Policy.load(path)


def test_missing_policy_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="policy file not found"):
        Policy.load(tmp_path / "nope.yaml")


def test_parse_uniform() -> None:
    assert parse_uniform("uniform_4") == (4, 4)
    assert parse_uniform("uniform_w2a3") == (2, 3)
    assert parse_uniform("uniform_x") is None and parse_uniform("policy.yaml") is None


def test_resolve_policy_variants(tmp_path: Path) -> None:
    assert _resolve(policy="uniform_w2a3").w_bits == [8, 2, 2, 2, 8]
    assert _resolve(w_bits=3).a_bits == [8, 3, 3, 3, 8]
    assert _resolve(w_bits=3, a_bits=5, pin_first_last=None).a_bits == [5] * 5
    path = Policy.uniform("lenet5", "mnist", NAMES, 6, 6).save(tmp_path / "p.yaml")
    assert _resolve(policy=str(path)).w_bits == [6] * 5
    with pytest.raises(UserError, match=r"either policy=\.\.\. or w_bits"):
        _resolve(policy="uniform_4", w_bits=4)
    with pytest.raises(UserError, match="no policy"):
        _resolve()
    with pytest.raises(UserError, match="cannot read 'uniform_four'"):
        _resolve(policy="uniform_four")
    with pytest.raises(UserError, match="w_bits=12 is out of range"):
        _resolve(w_bits=12)
