"""Rewards of the two RL agents (``conf/reward/``)."""

from __future__ import annotations

from dataclasses import dataclass


def releq_reward(
    state_quant: float, state_acc: float, a: float, b: float, threshold: float
) -> float:
    """ReLeQ's asymmetric reward (Elthakeb et al., IEEE Micro 2020, eq. 1).

    ``R = -1`` if ``y < th``, else ``(1 - x^a) * y^(b / y)``, with ``x`` the State of
    Quantization and ``y`` the State of Accuracy (``acc_q / acc_fp``): smooth in ``x``
    (pushes bits down) and punishing accuracy loss hard.
    """
    if state_acc < threshold:
        return -1.0
    return (1.0 - state_quant**a) * state_acc ** (b / state_acc)


@dataclass
class ReleqReward:
    """ReLeQ's reward with its hyperparameters (authors' code: a=0.8, b=1, th 0.4..0.8).

    ``every``: ``step`` retrains and rewards after every action (the paper); ``episode``
    evaluates only the finished episode (far fewer evaluations).
    ``state_quant_weighting``: ``none`` | ``params`` | ``macs`` (see SearchSpace.state_quant).
    """

    a: float = 0.8
    b: float = 1.0
    threshold: float = 0.4
    state_quant_weighting: str = "none"
    every: str = "step"
    name: str = "releq"

    def __post_init__(self) -> None:
        if self.every not in ("step", "episode"):
            raise ValueError(f"reward.every must be step or episode, got '{self.every}'")

    def __call__(self, state_quant: float, state_acc: float) -> float:
        return releq_reward(state_quant, state_acc, self.a, self.b, self.threshold)

    def accuracy_term(self, state_acc: float) -> float:
        """The reward at State of Quantization 0: ``y^(b/y)``, or -1 below the threshold
        (what ReLeQ's reward ranks policies by when a cost budget fixes their cost)."""
        return self(0.0, state_acc)


@dataclass
class HaqReward:
    """HAQ's reward ``R = lambda * (acc_q - acc_fp)`` (Wang et al., CVPR 2019, eq. 4).

    Accuracies in percent; ``scale`` is lambda (0.1). ``__call__`` gives the raw reward,
    the same for the same accuracy at any time. ``baseline_alpha`` is read by the haq agent:
    as in HAQ's code (``lib/rl/ddpg.py`` ``update_policy``), its replay buffer subtracts a
    moving average (rate alpha, 0.5) of sampled batches' mean rewards at update time
    (``qsearch.agents.haq.HaqReplayBuffer``); None turns that off.
    """

    scale: float = 0.1
    baseline_alpha: float | None = 0.5
    name: str = "haq"

    def raw(self, accuracy: float, float_accuracy: float) -> float:
        return self.scale * (accuracy - float_accuracy)

    def __call__(self, accuracy: float, float_accuracy: float) -> float:
        return self.raw(accuracy, float_accuracy)
