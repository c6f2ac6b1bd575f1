"""Gymnasium environments over the layer inventory: each step assigns one layer's bits.

:class:`ReleqEnv` (ReLeQ, Elthakeb et al. 2020): discrete actions pick a searched layer's
weight bits; the state is ReLeQ's embedding; the reward follows every action (after short
retraining) or only the finished episode. :class:`HaqEnv` (HAQ, Wang et al. 2019): a
continuous action per step, weight then activation bits of each searched layer; after the
last step the policy is projected onto the budget, evaluated, and rewarded.
"""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from qsearch.env.embedding import haq_layer_features, releq_layer_features
from qsearch.env.recorder import SearchRecorder
from qsearch.env.rewards import HaqReward, ReleqReward
from qsearch.env.space import SearchSpace
from qsearch.quant.policy import Policy

MAX_STATE_ACC = 2.0


class ReleqEnv(gym.Env[np.ndarray, int]):
    """One step per searched layer; action ``i`` gives it ``space.w_choices[i]`` weight bits.

    Observation (8 values): layer index / L, the layer's current bits / b_max, State of
    Quantization, State of Accuracy (acc_q / acc_fp), and the layer's out channels, in
    channels, kernel size and weight std (min-max normalized over the searched layers).
    Every layer starts at the largest choice (8 bits); the starting policy's accuracy is
    measured once as a reference point (not charged to the budget).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        space: SearchSpace,
        recorder: SearchRecorder,
        reward: ReleqReward,
        float_accuracy: float,
        weight_stds: list[float],
    ) -> None:
        self.space, self.recorder, self.reward = space, recorder, reward
        self.float_accuracy = float_accuracy
        searched = [space.inventory[i] for i in space.searchable]
        self.features = releq_layer_features(searched, [weight_stds[i] for i in space.searchable])
        self.layers = len(searched)
        self.b_max = space.w_choices[-1]
        self.action_space = spaces.Discrete(len(space.w_choices))
        self.observation_space = spaces.Box(0.0, MAX_STATE_ACC, (8,), np.float32)
        self.bits = [self.b_max] * self.layers
        self.position = 0
        self.state_acc = 1.0
        self.episode_return = 0.0

    def _policy(self) -> Policy:
        return self.space.policy(self.bits)

    def _observation(self) -> np.ndarray:
        position = min(self.position, self.layers - 1)
        state_quant = self.space.state_quant(self._policy(), self.reward.state_quant_weighting)
        head = [
            position / self.layers,
            self.bits[position] / self.b_max,
            state_quant,
            min(self.state_acc, MAX_STATE_ACC),
        ]
        return np.concatenate([np.array(head, np.float32), self.features[position]])

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.bits = [self.b_max] * self.layers
        self.position = 0
        self.episode_return = 0.0
        start = self.recorder.evaluate(self._policy(), reference=True)
        self.state_acc = start.accuracy / self.float_accuracy
        return self._observation(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        self.bits[self.position] = self.space.w_choices[int(action)]
        policy = self._policy()
        last = self.position == self.layers - 1
        reward, info = 0.0, {}
        if self.reward.every == "step" or last:
            evaluation = self.recorder.evaluate(policy)
            self.state_acc = evaluation.accuracy / self.float_accuracy
            state_quant = self.space.state_quant(policy, self.reward.state_quant_weighting)
            reward = self.reward(state_quant, self.state_acc)
            info = {"accuracy": evaluation.accuracy, "cost": evaluation.cost}
        self.episode_return += reward
        self.position += 1
        if last:
            self.recorder.end_episode(policy, self.episode_return, self.layers)
        return self._observation(), reward, last, False, info


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
    acc_fp)`` (minus a moving-average baseline, as in HAQ's code).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self, space: SearchSpace, recorder: SearchRecorder, reward: HaqReward, float_accuracy: float
    ) -> None:
        self.space, self.recorder, self.reward = space, recorder, reward
        self.float_accuracy = float_accuracy
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
        policy = self.space.enforce_budget(self.space.policy(self.w_bits, self.a_bits))
        evaluation = self.recorder.evaluate(policy)
        reward = self.reward(evaluation.accuracy, self.float_accuracy)
        self.recorder.end_episode(policy, reward, len(self.plan))
        info = {"accuracy": evaluation.accuracy, "cost": evaluation.cost}
        return self._observation(), reward, True, False, info
