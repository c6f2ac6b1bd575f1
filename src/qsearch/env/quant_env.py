"""Gymnasium environments over the layer inventory: each step assigns one layer's bits.

:class:`ReleqEnv` (ReLeQ, Elthakeb et al. 2020): discrete actions pick a searched layer's
weight bits (and activation bits, when searched); the state is ReLeQ's embedding; the reward
follows every action (after short retraining) or only the finished episode, which under a
cost budget is projected onto it first. :class:`HaqEnv` (HAQ, Wang et al. 2019): a
continuous action per step, weight then activation bits of each searched layer; after the
last step the policy is projected onto the budget, evaluated, and rewarded.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from qsearch.env.embedding import haq_layer_features, releq_layer_features
from qsearch.env.optimum import LayerOptions
from qsearch.env.recorder import SearchRecorder
from qsearch.env.rewards import HaqReward, ReleqReward
from qsearch.env.space import SearchSpace
from qsearch.env.surrogate import Imagination
from qsearch.quant.policy import Policy

MAX_STATE_ACC = 2.0


class ReleqEnv(gym.Env[np.ndarray, np.ndarray]):
    """One step per searched layer; action ``(i, j)`` gives it ``w_choices[i]`` weight
    and ``a_choices[j]`` activation bits (``MultiDiscrete``: two softmax heads).

    Without ``space.search_activations`` the second head has one choice, the fixed
    activation bits (ReLeQ's weight-only action); with it, one step per layer picks both,
    so an episode stays one step per layer.

    Observation (10 values): layer index / L; the bits this layer got in the previous
    episode's policy, weights / b_max and activations / a_max (b_max before the first);
    State of Quantization; State of Accuracy (acc_q / acc_fp); the committed cost (layers
    chosen so far plus the cheapest option for the rest, over the budget, or over uniform
    8-bit without one); and the layer's out channels, in channels, kernel size and weight
    std (min-max normalized over the searched layers).

    Without a cost budget, the reward is ReLeQ's (after every step with ``every=step``).
    With one, the finished episode is projected onto the budget as HAQ's is
    (``SearchSpace.enforce_budget``), evaluated, and rewarded by ReLeQ's accuracy term
    ``y^(b/y)`` alone (-1 below the threshold): every episode then costs one evaluation of a
    feasible policy, and the State of Quantization term, which would push bits below what
    the budget allows, is left out. Partial policies are never evaluated under a budget
    (they would be infeasible evaluations charged to the budget).

    With ``imagination`` (``agent.imagined_episodes`` > 0, a cost budget), the episodes
    it schedules are imagined: the projected policy is scored by its additive model
    instead of an evaluator, rewarded the same way, and neither charged nor recorded.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        space: SearchSpace,
        recorder: SearchRecorder,
        reward: ReleqReward,
        float_accuracy: float,
        weight_stds: list[float],
        infeasible: str = "project",
        imagination: Imagination | None = None,
    ) -> None:
        if infeasible not in ("project", "penalty"):
            raise ValueError(f"infeasible must be project or penalty, got '{infeasible}'")
        self.infeasible = infeasible
        self.space, self.recorder, self.reward = space, recorder, reward
        # imagined episodes need the reward at the episode's end: a cost budget
        active = imagination is not None and imagination.active and space.budget is not None
        self.imagination = imagination if active else None
        self.float_accuracy = float_accuracy
        searched = [space.inventory[i] for i in space.searchable]
        self.features = releq_layer_features(searched, [weight_stds[i] for i in space.searchable])
        self.layers = len(searched)
        self.table = LayerOptions.of(space)
        self.options = self.table.options
        self.b_max = space.w_choices[-1]
        self.a_max = max(a for _, a in self.options)
        self.cheapest = self.table.cost.min(axis=1)
        self.cost_reference = space.budget or self.table.policy_cost(
            [len(self.options) - 1] * self.layers
        )
        self.a_count = len(self.options) // len(space.w_choices)
        self.action_space = spaces.MultiDiscrete([len(space.w_choices), self.a_count])
        self.observation_space = spaces.Box(0.0, MAX_STATE_ACC, (10,), np.float32)
        self.start = len(self.options) - 1  # every layer at the largest (w, a) option
        self.previous = [self.start] * self.layers
        self.chosen = [self.start] * self.layers
        self.position = 0
        self.state_acc = 1.0
        self.episode_return = 0.0

    @property
    def budgeted(self) -> bool:
        return self.space.budget is not None

    def _policy(self) -> Policy:
        w_bits = [self.options[k][0] for k in self.chosen]
        a_bits = [self.options[k][1] for k in self.chosen]
        return self.space.policy(w_bits, a_bits)

    def _committed_cost(self) -> float:
        chosen = self.table.cost[np.arange(self.position), self.chosen[: self.position]]
        total = self.table.fixed_cost + chosen.sum() + self.cheapest[self.position :].sum()
        return float(total) / self.cost_reference

    def _observation(self) -> np.ndarray:
        position = min(self.position, self.layers - 1)
        w_prev, a_prev = self.options[self.previous[position]]
        state_quant = self.space.state_quant(self._policy(), self.reward.state_quant_weighting)
        head = [
            position / self.layers,
            w_prev / self.b_max,
            a_prev / self.a_max,
            state_quant,
            min(self.state_acc, MAX_STATE_ACC),
            min(self._committed_cost(), MAX_STATE_ACC),
        ]
        return np.concatenate([np.array(head, np.float32), self.features[position]])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.chosen = [self.start] * self.layers
        self.position = 0
        self.episode_return = 0.0
        start = self.recorder.evaluate(self._policy(), reference=True)
        self.state_acc = start.accuracy / self.float_accuracy
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        w_index, a_index = (int(i) for i in np.asarray(action).reshape(-1))
        self.chosen[self.position] = w_index * self.a_count + a_index
        last = self.position == self.layers - 1
        reward, info = 0.0, {}
        policy = self._policy()
        if last and self.budgeted and self.infeasible == "penalty":
            overshoot = self.space.cost.total(policy) / self.space.budget - 1
            if overshoot > 1e-9:  # infeasible: a failure, known without evaluating it
                reward, info = -1.0 - overshoot, {"cost": self.space.cost.total(policy)}
                return self._end(policy, reward, info)
        if last and self.imagination is not None and self.imagination.next_is_imagined():
            policy = self.space.enforce_budget(policy, count=False)
            accuracy = self.imagination.predict(policy)
            self.state_acc = accuracy / self.float_accuracy
            reward = self._reward(policy)
            return self._end(policy, reward, {"imagined": accuracy}, imagined=True)
        if last or (self.reward.every == "step" and not self.budgeted):
            policy = self.space.enforce_budget(policy)
            evaluation = self.recorder.evaluate(policy)
            if last and self.imagination is not None:
                self.imagination.observe(policy, evaluation.accuracy)
            self.state_acc = evaluation.accuracy / self.float_accuracy
            reward = self._reward(policy)
            info = {"accuracy": evaluation.accuracy, "cost": evaluation.cost}
        if last:
            return self._end(policy, reward, info)
        self.episode_return += reward
        self.position += 1
        return self._observation(), reward, False, False, info

    def _end(
        self, policy: Policy, reward: float, info: dict[str, Any], imagined: bool = False
    ) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Close the episode at ``policy``: log it (unless ``imagined``), remember its bits
        for the next state."""
        self.episode_return += reward
        self.position += 1
        if not imagined:
            self.recorder.end_episode(policy, self.episode_return, self.layers)
        w_bits, a_bits = self.space.searched_bits(policy)
        self.previous = [self.options.index(pair) for pair in zip(w_bits, a_bits, strict=True)]
        return self._observation(), reward, True, False, info

    def _reward(self, policy: Policy) -> float:
        if self.budgeted:
            return self.reward.accuracy_term(self.state_acc)
        state_quant = self.space.state_quant(policy, self.reward.state_quant_weighting)
        return self.reward(state_quant, self.state_acc)


def action_to_bits(action: float, choices: list[int]) -> int:
    """HAQ's mapping of ``a`` in [0, 1] onto the bit choices (eq. 2 of the paper:
    ``round(b_min - 0.5 + a * (b_max - b_min + 1))`` for contiguous choices)."""
    index = int(np.floor(float(np.clip(action, 0.0, 1.0)) * len(choices)))
    return choices[min(index, len(choices) - 1)]


class HaqEnv(gym.Env[np.ndarray, np.ndarray]):
    """One step per searched layer and quantized tensor kind (weights, then activations).

    Observation (10 values, min-max normalized over layers): HAQ's 8 layer features, then
    ``is_weight`` and the previous action. The reward is 0 until the last step, which
    projects the policy onto the budget, evaluates it and returns ``lambda * (acc_q -
    acc_fp)``; the agent's replay buffer gives every step of the episode that reward and
    centres sampled batches on a moving baseline (HAQ's code).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        space: SearchSpace,
        recorder: SearchRecorder,
        reward: HaqReward,
        float_accuracy: float,
        imagination: Imagination | None = None,
    ) -> None:
        self.space, self.recorder, self.reward = space, recorder, reward
        self.float_accuracy = float_accuracy
        self.imagination = imagination if imagination and imagination.active else None
        self.features = haq_layer_features([space.inventory[i] for i in space.searchable])
        kinds = (True, False) if space.search_activations else (True,)
        self.plan = [
            (position, is_weight)
            for position in range(len(space.searchable))
            for is_weight in kinds
        ]
        self.action_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.observation_space = spaces.Box(0.0, 1.0, (10,), np.float32)
        self._reset_state()

    def _reset_state(self) -> None:
        n = len(self.space.searchable)
        self.w_bits = [self.space.w_choices[-1]] * n
        self.a_bits = (
            [self.space.a_choices[-1]] * n
            if self.space.search_activations
            else [self.space.fixed_a_bits] * n
        )
        self.step_index = 0
        self.previous_action = 1.0

    def _observation(self) -> np.ndarray:
        position, is_weight = self.plan[min(self.step_index, len(self.plan) - 1)]
        tail = np.array([float(is_weight), self.previous_action], np.float32)
        return np.concatenate([self.features[position], tail])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self._reset_state()
        return self._observation(), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        value = float(np.clip(np.asarray(action, np.float64).reshape(-1)[0], 0.0, 1.0))
        position, is_weight = self.plan[self.step_index]
        if is_weight:
            self.w_bits[position] = action_to_bits(value, self.space.w_choices)
        else:
            self.a_bits[position] = action_to_bits(value, self.space.a_choices)
        self.previous_action = value
        self.step_index += 1
        if self.step_index < len(self.plan):
            return self._observation(), 0.0, False, False, {}
        proposal = self.space.policy(self.w_bits, self.a_bits)
        if self.imagination is not None and self.imagination.next_is_imagined():
            policy = self.space.enforce_budget(proposal, count=False)
            accuracy = self.imagination.predict(policy)
            reward = self.reward(accuracy, self.float_accuracy)
            return self._observation(), reward, True, False, {"imagined": accuracy}
        policy = self.space.enforce_budget(proposal)
        evaluation = self.recorder.evaluate(policy)
        if self.imagination is not None:
            self.imagination.observe(policy, evaluation.accuracy)
        reward = self.reward(evaluation.accuracy, self.float_accuracy)
        self.recorder.end_episode(policy, reward, len(self.plan))
        info = {"accuracy": evaluation.accuracy, "cost": evaluation.cost}
        return self._observation(), reward, True, False, info
