"""Instance-aware dynamic quantization (Liu et al., "Instance-Aware Dynamic Neural Network
Quantization", CVPR 2022; SPEC section 6).

A bit controller reads the features of the first (static) layers and picks, per input sample
and per dynamic layer, one of K candidate bitwidths (``b + offset``, default
``{b-1, b, b+1}``) for that layer's weights and activations. Training samples the choice
with a hard, straight-through Gumbel-Softmax; inference takes the argmax. The loss adds
``alpha * max(0, mean BitOPs / static BitOPs - target)`` to the task loss.

Modules: :mod:`.settings` (config and the static/dynamic layer plan), :mod:`.layers`
(dynamic Conv2d/Linear), :mod:`.controller`, :mod:`.cost` (per-sample BitOPs),
:mod:`.model` (the wrapped network), :mod:`.train` (joint training and per-sample
evaluation). Checkpoints: :mod:`qsearch.checkpoint`; the figure: :mod:`qsearch.report.figures`.
"""
