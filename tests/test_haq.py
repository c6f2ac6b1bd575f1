"""The HAQ agent follows HAQ's code (Wang et al., CVPR 2019; mit-han-lab/haq): every
transition of an episode carries its final raw reward, a moving baseline is subtracted at
sampling time (and survives a resume), and exploration draws from a normal truncated to
[0, 1] whose sigma decays per episode after the warm-up, counted by the recorder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from scipy.stats import truncnorm
from stable_baselines3.common.save_util import load_from_pkl

from qsearch.agents import SearchContext
from qsearch.agents.haq import BUFFER_FILE, HaqAgent, HaqDDPG, HaqReplayBuffer
from tests.test_agents import _context

pytestmark = pytest.mark.filterwarnings("ignore:We recommend you to use a symmetric")

OBS = spaces.Box(0.0, 1.0, (10,), np.float32)
ACTION = spaces.Box(0.0, 1.0, (1,), np.float32)


def _buffer(size: int, alpha: float | None = None) -> HaqReplayBuffer:
    return HaqReplayBuffer(size, OBS, ACTION, device="cpu", baseline_alpha=alpha)


def _episode(buffer: HaqReplayBuffer, length: int, reward: float) -> None:
    """``length`` transitions, rewarded 0 but the last (as HaqEnv does)."""
    for step in range(length):
        last = step == length - 1
        buffer.add(
            OBS.sample(),
            OBS.sample(),
            ACTION.sample(),
            np.array([reward if last else 0.0]),
            np.array([last]),
            [{}],
        )


def _haq(
    tmp_path: Path, budget: int, *overrides: str, resume: bool = False
) -> tuple[SearchContext, HaqAgent]:
    ctx, agent = _context(
        "haq",
        tmp_path,
        budget,
        resume=resume,
        cost_fraction=0.6,
        overrides=("agent.warmup_episodes=2", *overrides),
    )
    assert isinstance(agent, HaqAgent)
    return ctx, agent


def _fixed_actor(model: HaqDDPG) -> None:
    """The actor outputs 0 in SB3's [-1, 1] units, i.e. 0.5 in the env's [0, 1]."""
    last = [m for m in model.actor.mu if isinstance(m, torch.nn.Linear)][-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    model._last_obs = model.get_env().reset()  # type: ignore[union-attr,assignment]


def _actions(model: HaqDDPG, n: int = 2000) -> np.ndarray:
    samples = [model._sample_action(model.learning_starts, None, 1) for _ in range(n)]
    for action, buffer_action in samples[:20]:
        assert np.allclose(buffer_action, model.policy.scale_action(action))
    return np.array([float(action.reshape(-1)[0]) for action, _ in samples])


def _truncated_std(sigma: float, mean: float = 0.5) -> float:
    return float(truncnorm.std(-mean / sigma, (1 - mean) / sigma, loc=mean, scale=sigma))


def test_buffer_gives_every_transition_the_final_reward_across_the_wrap() -> None:
    buffer = _buffer(5)
    _episode(buffer, 3, -1.0)  # rows 0, 1, 2
    assert buffer.rewards[:3, 0].tolist() == [-1.0, -1.0, -1.0]
    _episode(buffer, 3, -2.0)  # rows 3, 4, then 0 (wraps)
    assert buffer.full and buffer.pos == 1
    assert buffer.rewards[:, 0].tolist() == [-2.0, -1.0, -1.0, -2.0, -2.0]
    assert buffer.episode_length == 0


def test_buffer_subtracts_a_moving_baseline_when_sampling() -> None:
    buffer = _buffer(3, alpha=0.5)  # one 3-step episode fills the buffer
    _episode(buffer, 3, -1.0)
    batch = buffer.sample(8)
    assert buffer.baseline == pytest.approx(-1.0)  # the first batch's mean sets it
    assert batch.rewards.numpy() == pytest.approx(np.zeros((8, 1)))
    _episode(buffer, 3, -3.0)
    batch = buffer.sample(8)
    assert buffer.baseline == pytest.approx(-2.0)  # -1 + 0.5 * (-3 - -1)
    assert batch.rewards.numpy() == pytest.approx(np.full((8, 1), -1.0))
    assert buffer.rewards[:, 0].tolist() == [-3.0, -3.0, -3.0]  # stored raw
    raw = _buffer(3)
    _episode(raw, 3, -3.0)
    assert raw.sample(4).rewards.numpy() == pytest.approx(np.full((4, 1), -3.0))
    assert raw.baseline is None


def test_search_stores_the_raw_final_reward_in_every_transition(tmp_path: Path) -> None:
    ctx, agent = _haq(tmp_path, 6)
    agent.search(ctx)
    buffer = load_from_pkl(tmp_path / BUFFER_FILE)
    assert isinstance(buffer, HaqReplayBuffer)
    assert buffer.baseline is not None  # DDPG trained after the warm-up
    episodes = ctx.recorder.episodes
    steps = int(episodes[0]["steps"])
    stored = buffer.pos // steps  # SB3 stops before storing the last episode's final step
    assert stored >= len(episodes) - 1 >= 5
    for episode in episodes[:stored]:
        rows = buffer.rewards[episode["episode"] * steps : (episode["episode"] + 1) * steps, 0]
        raw = 0.1 * (episode["accuracy"] - 99.0)
        assert episode["return"] == pytest.approx(raw)  # the first one is not 0
        assert rows == pytest.approx(np.full(steps, raw), abs=1e-6)


def test_baseline_and_buffer_survive_resume(tmp_path: Path) -> None:
    ctx, agent = _haq(tmp_path, 6)
    agent.search(ctx)
    saved = load_from_pkl(tmp_path / BUFFER_FILE)
    assert saved.baseline is not None and saved.episode_length > 0  # cut at the last step
    resumed, agent = _haq(tmp_path, 9, resume=True)
    model, env = agent.build_model(resumed)
    buffer = model.replay_buffer
    assert isinstance(buffer, HaqReplayBuffer)
    assert buffer.baseline == saved.baseline
    assert buffer.episode_length == 0 and buffer.pos % len(env.plan) == 0
    assert buffer.pos == saved.pos - saved.episode_length  # the open episode is dropped
    before = buffer.baseline
    batch = buffer.sample(16)
    raw_mean = float(batch.rewards.mean()) + buffer.baseline
    assert buffer.baseline == pytest.approx(before + 0.5 * (raw_mean - before))


@pytest.mark.parametrize("sigma", [0.1, 0.5])
def test_exploration_is_a_normal_truncated_to_the_action_range(
    tmp_path: Path, sigma: float
) -> None:
    ctx, agent = _haq(tmp_path, 4, "agent.warmup_episodes=0", f"agent.noise_sigma={sigma}")
    model, _ = agent.build_model(ctx)
    _fixed_actor(model)
    actions = _actions(model)
    assert actions.min() > 0.0 and actions.max() < 1.0  # truncated, not clipped
    assert actions.mean() == pytest.approx(0.5, abs=0.02)
    assert actions.std() == pytest.approx(_truncated_std(sigma), rel=0.06)  # [0, 1] units


def test_exploration_sigma_follows_the_recorded_episodes(tmp_path: Path) -> None:
    ctx, agent = _haq(tmp_path, 4, "agent.noise_sigma=0.4", "agent.noise_decay=0.5")
    model, env = agent.build_model(ctx)
    _fixed_actor(model)
    assert model.learning_starts == 2 * len(env.plan)
    assert model.exploration_sigma() is None  # warm-up: uniform actions, no noise
    assert _actions(model, 1000).std() == pytest.approx(1 / np.sqrt(12), rel=0.08)
    policy = ctx.space.uniform(8)
    for _ in range(2):
        ctx.recorder.end_episode(policy, 0.0, len(env.plan))
    model.num_timesteps = model.learning_starts
    assert model.exploration_sigma() == pytest.approx(0.4)  # the first learned episode
    assert _actions(model).std() == pytest.approx(_truncated_std(0.4), rel=0.06)
    for _ in range(2):
        ctx.recorder.end_episode(policy, 0.0, len(env.plan))
    assert model.exploration_sigma() == pytest.approx(0.4 * 0.5**2)
    assert _actions(model).std() == pytest.approx(_truncated_std(0.1), rel=0.06)


def _record_sigmas(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float | None]]:
    """(finished episodes, sigma) at every action a HaqDDPG samples."""
    seen: list[tuple[int, float | None]] = []
    original = HaqDDPG._sample_action

    def recording(self: HaqDDPG, *args: Any, **kwargs: Any) -> Any:
        assert self.episodes_done is not None
        seen.append((self.episodes_done(), self.exploration_sigma()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HaqDDPG, "_sample_action", recording)
    return seen


def _expected(episode: int) -> float | None:
    return None if episode < 2 else 0.4 * 0.5 ** (episode - 2)


def test_sigma_decays_from_the_warmup_end_and_across_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    overrides = ("agent.noise_sigma=0.4", "agent.noise_decay=0.5")
    seen = _record_sigmas(monkeypatch)
    ctx, agent = _haq(tmp_path, 6, *overrides)
    agent.search(ctx)
    assert {episode for episode, _ in seen} == set(range(ctx.recorder.episode))
    assert all(sigma == _expected(episode) for episode, sigma in seen)
    assert (2, 0.4) in seen  # learn()'s noise reset does not decay it one episode early
    seen.clear()
    resumed, agent = _haq(tmp_path, 9, *overrides, resume=True)
    episodes = resumed.recorder.episode
    assert episodes >= 6
    agent.search(resumed)
    assert seen[0] == (episodes, _expected(episodes))  # continues from the recorded count
    assert all(sigma == pytest.approx(_expected(episode)) for episode, sigma in seen)
