"""HAQ agent: stable-baselines3's DDPG (Wang et al., CVPR 2019).

HAQ's settings: actor and critic with two hidden layers of 300 units, actor lr 1e-4 and
critic lr 1e-3, tau 0.01, batch 64, 20 warm-up episodes of random actions, exploration
noise with sigma 0.5 decaying x0.99 per episode, discount 1 (the reward comes at the end).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from stable_baselines3 import DDPG
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.utils import update_learning_rate
from stable_baselines3.common.vec_env import DummyVecEnv

from qsearch.agents import SearchContext
from qsearch.agents._sb3 import AGENT_FILE, learn_within_budget, save_atomic
from qsearch.env.quant_env import HaqEnv
from qsearch.env.rewards import HaqReward

BUFFER_FILE = "replay_buffer.pkl"


class HaqDDPG(DDPG):
    """SB3's DDPG with its own critic learning rate (SB3 uses one rate for both nets)."""

    def __init__(self, *args: Any, critic_learning_rate: float = 1e-3, **kwargs: Any) -> None:
        self.critic_learning_rate = critic_learning_rate
        super().__init__(*args, **kwargs)

    def _update_learning_rate(self, optimizers: Any) -> None:
        super()._update_learning_rate(optimizers)
        update_learning_rate(self.critic.optimizer, self.critic_learning_rate)


class DecayingNormalNoise(ActionNoise):
    """Gaussian exploration noise whose sigma shrinks by ``decay`` after every episode past
    the warm-up (HAQ: a normal truncated to the action range; here the env clips to [0, 1])."""

    def __init__(self, sigma: float, decay: float, warmup_episodes: int, seed: int) -> None:
        super().__init__()
        self.sigma, self.decay = sigma, decay
        self.warmup_episodes = warmup_episodes
        self.episodes = 0
        self.rng = np.random.default_rng(seed)

    def __call__(self) -> np.ndarray:
        return self.rng.normal(0.0, self.sigma, size=(1,)).astype(np.float32)

    def reset(self) -> None:
        self.episodes += 1
        if self.episodes > self.warmup_episodes:
            self.sigma *= self.decay


@dataclass
class HaqAgent:
    """DDPG over :class:`~qsearch.env.quant_env.HaqEnv` with HAQ's hyperparameters."""

    actor_lr: float = 1e-4
    critic_lr: float = 1e-3
    tau: float = 0.01
    batch_size: int = 64
    gamma: float = 1.0
    warmup_episodes: int = 20
    noise_sigma: float = 0.5
    noise_decay: float = 0.99
    buffer_size: int = 100_000
    net_arch: list[int] = field(default_factory=lambda: [300, 300])
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

    def search(self, ctx: SearchContext) -> None:
        if not isinstance(ctx.reward, HaqReward):
            raise TypeError("the haq agent needs reward=haq")
        env = HaqEnv(ctx.space, ctx.recorder, ctx.reward, ctx.float_accuracy)
        vec_env = DummyVecEnv([lambda: env])
        steps = len(env.plan)
        saved, buffer = ctx.run_dir / AGENT_FILE, ctx.run_dir / BUFFER_FILE
        noise = DecayingNormalNoise(
            self.noise_sigma, self.noise_decay, self.warmup_episodes, ctx.seed
        )
        if ctx.resume and saved.is_file():
            model: HaqDDPG = HaqDDPG.load(saved, env=vec_env, device="cpu")
            if buffer.is_file():
                model.load_replay_buffer(buffer)
            noise.episodes = ctx.recorder.episode
            noise.sigma *= self.noise_decay ** max(0, noise.episodes - self.warmup_episodes)
            model.action_noise = noise
        else:
            model = HaqDDPG(
                "MlpPolicy",
                vec_env,
                learning_rate=self.actor_lr,
                critic_learning_rate=self.critic_lr,
                buffer_size=self.buffer_size,
                learning_starts=self.warmup_episodes * steps,
                batch_size=self.batch_size,
                tau=self.tau,
                gamma=self.gamma,
                train_freq=(1, "episode"),
                gradient_steps=-1,
                action_noise=noise,
                seed=ctx.seed,
                device="cpu",
                policy_kwargs={"net_arch": {"pi": list(self.net_arch), "qf": list(self.net_arch)}},
            )

        def save(algorithm: BaseAlgorithm) -> None:
            save_atomic(saved, algorithm.save)
            save_atomic(buffer, algorithm.save_replay_buffer)  # type: ignore[attr-defined]

        learn_within_budget(model, ctx, steps, save)
