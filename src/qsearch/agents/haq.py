"""HAQ agent: stable-baselines3's DDPG (Wang et al., CVPR 2019).

HAQ's settings: actor and critic with two hidden layers of 300 units, actor lr 1e-4 and
critic lr 1e-3, tau 0.01, batch 64, 20 warm-up episodes of random actions, exploration
noise with sigma 0.5 (in [0, 1] action units) decaying x0.99 per episode. The defaults
here differ in three, tuned on the resnet20-shaped synthetic landscape
(``scripts/bench_agents.py``), where HAQ's settings left the actor barely trained after
200 episodes: actor lr 1e-3, 5 warm-up episodes, sigma 0.2.

Where SB3's DDPG differs from HAQ's code (mit-han-lab/haq, ``lib/rl/ddpg.py`` and
``rl_quantize.py``), its extension points follow that code:

- :class:`HaqReplayBuffer` gives every transition of an episode the episode's final reward
  (HAQ's ``train()``) and subtracts a moving-average baseline at sampling time (HAQ's
  ``DDPG.update_policy``); the env and :class:`~qsearch.env.rewards.HaqReward` give the
  raw reward ``lambda * (acc_q - acc_fp)``.
- :meth:`HaqDDPG._sample_action` samples the env action from a normal truncated to
  [0, 1] around the actor's action (HAQ's ``select_action``), not SB3's clipped noise.

Discount: HAQ's code uses gamma 1 with every transition carrying the final reward ``R``,
so the critic learns ``Q(s_t) = (T - t) R``, a target whose scale depends on the step and
which bootstraps through the target networks. We choose **gamma 0** (``agent.gamma`` in
conf/agent/haq.yaml, ``1.0`` restores HAQ's): each transition's target is then the
episode's (baseline-centred) reward itself, and ``Q(s_t, a_t)`` a direct estimate of the
reward of the episodes that took ``a_t`` at ``s_t``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from gymnasium import spaces
from scipy.stats import truncnorm
from stable_baselines3 import DDPG
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.type_aliases import ReplayBufferSamples
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

from qsearch.agents import SearchContext
from qsearch.agents._sb3 import AGENT_FILE, imagination, learn_within_budget, save_atomic
from qsearch.env.quant_env import HaqEnv
from qsearch.env.rewards import HaqReward

BUFFER_FILE = "replay_buffer.pkl"


class HaqReplayBuffer(ReplayBuffer):
    """SB3's replay buffer with HAQ's reward handling (Wang et al., CVPR 2019).

    Credit assignment (HAQ's code, ``rl_quantize.py`` ``train()``: every transition of a
    finished episode is observed with the final reward): the env rewards only an
    episode's last step; when that transition (``done``) is added, its reward is written
    into every transition of the episode, across the circular buffer's wrap. SB3 trains
    after whole episodes (``train_freq=(1, "episode")``), so no transition is sampled
    before its reward is in.

    Baseline (HAQ's code, ``lib/rl/ddpg.py`` ``update_policy``): the buffer keeps raw
    rewards; every ``sample()`` moves a moving average towards the batch's mean reward
    (``ma += alpha * (mean - ma)``, the first batch sets it) and returns the batch's
    rewards minus it. ``baseline_alpha=None`` turns that off. The average lives in the
    buffer, so ``save_replay_buffer`` / ``load_replay_buffer`` carry it over a resume.
    """

    def __init__(self, *args: Any, baseline_alpha: float | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.n_envs != 1:
            raise ValueError("HaqReplayBuffer tracks the episode of a single env")
        self.baseline_alpha = baseline_alpha
        self.baseline: float | None = None
        self.episode_length = 0  # transitions of the open (unfinished) episode

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        action: np.ndarray,
        reward: np.ndarray,
        done: np.ndarray,
        infos: list[dict[str, Any]],
    ) -> None:
        pos = self.pos
        super().add(obs, next_obs, action, reward, done, infos)
        self.episode_length += 1
        if bool(np.asarray(done).reshape(-1)[0]):
            length = min(self.episode_length, self.buffer_size)
            rows = (pos - np.arange(length)) % self.buffer_size
            self.rewards[rows] = self.rewards[pos]
            self.episode_length = 0

    def discard_open_episode(self) -> None:
        """Drop the transitions of an episode that never finished: SB3 stops (budget
        spent) before storing the final transition, so a resumed search would otherwise
        credit them with the next episode's reward. ``pos`` moves back over them; when the
        buffer is full they stay sampleable until the next episode (of the same length)
        overwrites them, which happens before the next training."""
        length = self.episode_length
        self.episode_length = 0
        if length == 0:
            return
        if length >= self.buffer_size:
            self.pos, self.full = 0, False
        elif self.full:
            self.pos = (self.pos - length) % self.buffer_size
        else:
            self.pos -= length

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> ReplayBufferSamples:
        batch = super().sample(batch_size, env=env)
        if self.baseline_alpha is None:
            return batch
        mean = float(batch.rewards.mean())
        if self.baseline is None:
            self.baseline = mean
        else:
            self.baseline += self.baseline_alpha * (mean - self.baseline)
        return batch._replace(rewards=batch.rewards - self.baseline)


class HaqDDPG(DDPG):
    """SB3's DDPG with its own critic learning rate (SB3 uses one rate for both nets) and
    HAQ's exploration (Wang et al., CVPR 2019).

    Exploration, as HAQ's code (``lib/rl/ddpg.py`` ``select_action``): during the warm-up
    (``learning_starts``) SB3's uniform random actions; after it, the env action is drawn
    from a normal truncated to the action range ([0, 1]) with the actor's action as mean
    and sigma ``noise_sigma * noise_decay ** (episodes_done - warmup_episodes)``, in [0, 1]
    units (HAQ: ``delta = init_delta * delta_decay ** (episode - warmup)``). Finished
    episodes are counted by ``episodes_done`` (the search recorder, which survives a
    resume; not saved with the model), not by SB3's noise resets.
    """

    def __init__(
        self,
        *args: Any,
        critic_learning_rate: float = 1e-3,
        noise_sigma: float = 0.5,
        noise_decay: float = 0.99,
        warmup_episodes: int = 20,
        **kwargs: Any,
    ) -> None:
        self.critic_learning_rate = critic_learning_rate
        self.noise_sigma, self.noise_decay = noise_sigma, noise_decay
        self.warmup_episodes = warmup_episodes
        self.episodes_done: Callable[[], int] | None = None
        super().__init__(*args, **kwargs)
        self.noise_rng = np.random.default_rng(self.seed)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "episodes_done"]

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)
        update_learning_rate(self.critic.optimizer, self.critic_learning_rate)

    def exploration_sigma(self) -> float | None:
        """Sigma of the next action's truncated normal, None during the warm-up."""
        if self.num_timesteps < self.learning_starts:
            return None
        done = self.episodes_done() if self.episodes_done is not None else self._episode_num
        return self.noise_sigma * self.noise_decay ** max(done - self.warmup_episodes, 0)

    def _sample_action(
        self, learning_starts: int, action_noise: Any = None, n_envs: int = 1
    ) -> tuple[np.ndarray, np.ndarray]:
        action, buffer_action = super()._sample_action(learning_starts, None, n_envs)
        sigma = self.exploration_sigma()
        if self.num_timesteps < learning_starts or not sigma:
            return action, buffer_action  # warm-up: uniform random actions, no noise
        assert isinstance(self.action_space, spaces.Box)
        low, high = self.action_space.low, self.action_space.high
        mean = np.clip(np.asarray(action, np.float64), low, high)
        noisy = truncnorm.rvs(
            (low - mean) / sigma,
            (high - mean) / sigma,
            loc=mean,
            scale=sigma,
            size=mean.shape,
            random_state=self.noise_rng,
        )
        action = np.asarray(noisy, dtype=self.action_space.dtype)
        return action, self.policy.scale_action(action)


@dataclass
class HaqAgent:
    """DDPG over :class:`~qsearch.env.quant_env.HaqEnv` with HAQ's hyperparameters
    (Wang et al., CVPR 2019; actor lr, warm-up and sigma tuned, see the module notes),
    but ``gamma`` 0 where HAQ's code has 1: every transition
    carries the episode's reward, so each Q estimates that reward (see the module notes;
    ``agent.gamma=1`` restores HAQ's). ``noise_sigma`` is in [0, 1] action units."""

    actor_lr: float = 1e-3
    critic_lr: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    gamma: float = 0.0
    warmup_episodes: int = 5
    noise_sigma: float = 0.2
    noise_decay: float = 0.99
    buffer_size: int = 100_000
    net_arch: list[int] = field(default_factory=lambda: [300, 300])
    imagined_episodes: int = 0
    imagine_after: int = 10
    name: str = "haq"

    def learning_note(self, episodes: int, evaluations: int) -> str | None:
        """A warning when most episodes were DDPG's random warm-up, else None.

        HAQ evaluates one whole policy per episode and follows its actor only after
        ``warmup_episodes`` of random actions: with fewer learned episodes than warm-up
        ones the search was mostly random search.
        """
        learned = max(episodes - self.warmup_episodes, 0)
        if learned >= self.warmup_episodes:
            return None
        return (
            f"haq: {min(episodes, self.warmup_episodes)} of its {episodes} episodes "
            f"({evaluations} evaluations) were DDPG's random warm-up (agent.warmup_episodes="
            f"{self.warmup_episodes}) and {learned} followed the learned actor: this was "
            f"mostly random search; raise budget.evaluations (>= {2 * self.warmup_episodes}) "
            "or lower agent.warmup_episodes"
        )

    def build_model(self, ctx: SearchContext) -> tuple[HaqDDPG, HaqEnv]:
        """A new DDPG over a fresh :class:`HaqEnv`, or (``ctx.resume``) the saved one with
        its replay buffer; exploration counts episodes from ``ctx.recorder``."""
        if not isinstance(ctx.reward, HaqReward):
            raise TypeError("the haq agent needs reward=haq")
        env = HaqEnv(
            ctx.space,
            ctx.recorder,
            ctx.reward,
            ctx.float_accuracy,
            imagination(ctx, self.imagined_episodes, self.imagine_after),
        )
        vec_env = DummyVecEnv([lambda: env])
        steps = len(env.plan)
        saved, buffer = ctx.run_dir / AGENT_FILE, ctx.run_dir / BUFFER_FILE
        alpha = ctx.reward.baseline_alpha
        if ctx.resume and saved.is_file():
            model: HaqDDPG = HaqDDPG.load(saved, env=vec_env, device="cpu")
            if buffer.is_file():
                model.load_replay_buffer(buffer)
            replay = model.replay_buffer
            if not isinstance(replay, HaqReplayBuffer):
                raise TypeError(
                    f"{saved.parent} was saved by an older haq agent (plain replay buffer); "
                    "start a new run"
                )
            replay.discard_open_episode()
            replay.baseline_alpha = alpha
            model._last_obs = None  # type: ignore[assignment]  # learn() starts a new episode
            model.noise_sigma, model.noise_decay = self.noise_sigma, self.noise_decay
            model.warmup_episodes = self.warmup_episodes
            model.action_noise = None
        else:
            model = HaqDDPG(
                "MlpPolicy",
                vec_env,
                learning_rate=self.actor_lr,
                critic_learning_rate=self.critic_lr,
                noise_sigma=self.noise_sigma,
                noise_decay=self.noise_decay,
                warmup_episodes=self.warmup_episodes,
                buffer_size=self.buffer_size,
                learning_starts=self.warmup_episodes * steps,
                batch_size=self.batch_size,
                tau=self.tau,
                gamma=self.gamma,
                train_freq=(1, "episode"),
                gradient_steps=-1,
                action_noise=None,
                replay_buffer_class=HaqReplayBuffer,
                replay_buffer_kwargs={"baseline_alpha": alpha},
                seed=ctx.seed,
                device="cpu",
                policy_kwargs={"net_arch": {"pi": list(self.net_arch), "qf": list(self.net_arch)}},
            )
        recorder = ctx.recorder
        model.episodes_done = lambda: recorder.episode
        return model, env

    def search(self, ctx: SearchContext) -> None:
        model, env = self.build_model(ctx)
        saved, buffer = ctx.run_dir / AGENT_FILE, ctx.run_dir / BUFFER_FILE

        def save(algorithm: BaseAlgorithm) -> None:
            save_atomic(saved, algorithm.save)
            save_atomic(buffer, algorithm.save_replay_buffer)  # type: ignore[attr-defined]

        learn_within_budget(model, ctx, len(env.plan), save, self.imagined_episodes)
