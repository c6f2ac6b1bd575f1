"""ReLeQ agent: sb3-contrib's RecurrentPPO with an LSTM policy (Elthakeb et al., 2020).

The paper's networks: an LSTM of 128 units as the first hidden layer of both policy and
value, then FC 128-128 and a softmax over the bit choices for the policy, FC 128-64 for the
value; trained with PPO. The authors' code uses Adam lr 1e-4, clip 0.3, entropy 0.01,
gamma 0.9 and 10 epochs; the defaults here (lr 1e-3, clip 0.2, gamma 1, 20 epochs) were
tuned on the resnet20-shaped synthetic landscape (``scripts/bench_agents.py``, table in
docs/benchmarks.md), where each of them lowered the regret at 200 evaluations. Under a
cost budget the env projects each finished episode onto it and rewards accuracy alone (see
:class:`~qsearch.env.quant_env.ReleqEnv`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sb3_contrib import RecurrentPPO
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv

from qsearch.agents import SearchContext
from qsearch.agents._sb3 import AGENT_FILE, imagination, learn_within_budget, save_atomic
from qsearch.env.embedding import weight_std
from qsearch.env.quant_env import ReleqEnv
from qsearch.env.rewards import ReleqReward


@dataclass
class ReleqAgent:
    """RecurrentPPO (``MlpLstmPolicy``) over :class:`~qsearch.env.quant_env.ReleqEnv`.

    ``episodes_per_update``: episodes per PPO rollout (``n_steps`` = that x layers).
    """

    learning_rate: float = 1e-3
    clip_range: float = 0.2
    ent_coef: float = 0.01
    gamma: float = 1.0
    gae_lambda: float = 0.95
    n_epochs: int = 20
    episodes_per_update: int = 4
    lstm_hidden_size: int = 128
    infeasible: str = "project"
    net_arch: dict[str, list[int]] = field(
        default_factory=lambda: {"pi": [128, 128], "vf": [128, 64]}
    )
    imagined_episodes: int = 0
    imagine_after: int = 10
    name: str = "releq"

    def learning_note(self, episodes: int, evaluations: int) -> str | None:
        """A warning when the search ended after fewer than 3 PPO updates, else None.

        PPO updates once per ``episodes_per_update`` episodes; with ``reward.every=step``
        an episode may retrain one partial policy per layer, each charged to the budget.
        """
        updates = episodes // self.episodes_per_update
        if updates >= 3:
            return None
        return (
            f"releq: {evaluations} evaluations took {episodes} episodes, i.e. {updates} PPO "
            f"update(s) (one per {self.episodes_per_update} episodes): the LSTM policy "
            "barely learned, so its pick is close to a random one; raise budget.evaluations "
            "(or set reward.every=episode: one retraining per episode, not one per layer)"
        )

    def search(self, ctx: SearchContext) -> None:
        if not isinstance(ctx.reward, ReleqReward):
            raise TypeError("the releq agent needs reward=releq")
        env = ReleqEnv(
            ctx.space,
            ctx.recorder,
            ctx.reward,
            ctx.float_accuracy,
            weight_std(ctx.float_model, ctx.space.inventory),
            self.infeasible,
            imagination(ctx, self.imagined_episodes, self.imagine_after),
        )
        vec_env = DummyVecEnv([lambda: env])
        steps = env.layers * self.episodes_per_update
        saved = ctx.run_dir / AGENT_FILE
        if ctx.resume and saved.is_file():
            model: RecurrentPPO = RecurrentPPO.load(saved, env=vec_env, device="cpu")
        else:
            model = RecurrentPPO(
                "MlpLstmPolicy",
                vec_env,
                learning_rate=self.learning_rate,
                n_steps=steps,
                batch_size=steps,
                n_epochs=self.n_epochs,
                gamma=self.gamma,
                gae_lambda=self.gae_lambda,
                clip_range=self.clip_range,
                ent_coef=self.ent_coef,
                seed=ctx.seed,
                device="cpu",
                policy_kwargs={
                    "lstm_hidden_size": self.lstm_hidden_size,
                    "net_arch": dict(self.net_arch),
                },
            )

        def save(algorithm: BaseAlgorithm) -> None:
            save_atomic(saved, algorithm.save)

        learn_within_budget(model, ctx, env.layers, save, self.imagined_episodes)
