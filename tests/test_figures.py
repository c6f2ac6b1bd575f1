"""The Pareto front and the search figures."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from qsearch.env.recorder import Evaluation
from qsearch.quant.policy import Policy
from qsearch.report.figures import (
    bits_figure,
    curve_series,
    curves_figure,
    pareto_figure,
    pareto_front,
)

POINTS = st.lists(st.tuples(st.floats(0, 1), st.floats(0, 100)), min_size=1, max_size=40)


def _dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[0] and a[1] >= b[1] and a != b


@settings(max_examples=100, deadline=None)
@given(points=POINTS)
def test_front_is_exactly_the_non_dominated_points(points: list[tuple[float, float]]) -> None:
    front = pareto_front(points)
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)
    for i in front:
        assert not any(_dominates(p, points[i]) for p in points)
    for j in set(range(len(points))) - set(front):
        assert any(_dominates(points[i], points[j]) or points[i] == points[j] for i in front)


def test_front_hand_example() -> None:
    points = [(0.5, 90.0), (0.2, 80.0), (0.3, 85.0), (0.4, 84.0), (0.9, 90.0)]
    assert pareto_front(points) == [1, 2, 0]


def _evaluation(index: int, cost: float, accuracy: float) -> Evaluation:
    return Evaluation(
        index=index,
        episode=index,
        w_bits=[8, 2, 8],
        a_bits=[8, 8, 8],
        accuracy=accuracy,
        cost=cost,
        feasible=True,
        objective=accuracy,
        seconds=0.1,
        cached=False,
    )


def test_figures_are_written_as_png(tmp_path: Path) -> None:
    evaluations = [_evaluation(i, 10.0 + i, 90.0 + (i % 3)) for i in range(6)]
    pareto = pareto_figure(
        tmp_path / "pareto.png",
        evaluations,
        {"W8": _evaluation(9, 20, 91)},
        evaluations[2],
        20.0,
        "bitops",
        15.0,
        92.0,
        "test",
    )
    policy = Policy.from_bits("m", "d", ["a", "b", "c"], [8, 2, 8], [8, 4, 8])
    bits = bits_figure(tmp_path / "bits.png", policy, [10, 1000, 100], "test")
    for path in (pareto, bits):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bits.png", "pareto.png"]


HISTORY = [
    {"epoch": 1, "lr": 0.1, "train_loss": 1.5, "train_acc": 40.0, "val_loss": 1.2, "val_acc": 55.0},
    {"epoch": 2, "lr": 0.05, "train_loss": 0.9, "train_acc": 70.0},  # no val this epoch
    {"epoch": 3, "lr": 0.0, "train_loss": 0.5, "train_acc": 85.0, "val_loss": 0.6, "val_acc": 80.0},
]


def test_curve_series_picks_keys_by_suffix_and_skips_missing_epochs() -> None:
    assert curve_series(HISTORY, "_acc") == {
        "train_acc": ([1, 2, 3], [40.0, 70.0, 85.0]),
        "val_acc": ([1, 3], [55.0, 80.0]),
    }
    assert list(curve_series(HISTORY, "_loss")) == ["train_loss", "val_loss"]
    assert curve_series(HISTORY, "lr") == {"lr": ([1, 2, 3], [0.1, 0.05, 0.0])}


def test_curves_figure_is_a_png_and_skips_an_empty_history(tmp_path: Path) -> None:
    path = curves_figure(tmp_path / "curves.png", HISTORY, "test")
    assert path is not None and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert curves_figure(tmp_path / "empty.png", [], "test") is None
    assert not (tmp_path / "empty.png").exists()
