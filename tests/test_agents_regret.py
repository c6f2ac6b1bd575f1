"""The RL agents against random search on the resnet20-shaped synthetic landscape (slow:
the RL updates take about a minute per run on 2 cores)."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from qsearch.agents.landscape import search_landscape

BITS = "[2,3,4,5,6,7,8]"
SPACE = [
    "model=resnet20",
    "dataset=cifar10",
    "search.search_activations=true",
    f"search.w_bits={BITS}",
    f"search.a_bits={BITS}",
    "budget.evaluations=200",
]


def _median_regret(agent: str, tmp_path: Path, seeds: int = 5) -> float:
    regrets = []
    for seed in range(seeds):
        folder = tmp_path / f"{agent}-{seed}"
        folder.mkdir()
        run = search_landscape([f"agent={agent}", f"seed={seed}", *SPACE], folder, max_episodes=400)
        regret = run.regret_after(200)
        assert regret is not None and regret >= -1e-9
        regrets.append(regret)
    return statistics.median(regrets)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric")
@pytest.mark.parametrize("agent", ["haq", "releq"])
def test_rl_agent_beats_random_search_at_200_evaluations(agent: str, tmp_path: Path) -> None:
    assert _median_regret(agent, tmp_path) < _median_regret("random", tmp_path)
