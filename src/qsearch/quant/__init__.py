"""Quantizers, quantized layers, policies and the periodic regularizer.

One verb applies a policy to any model: :func:`quantize_model` swaps each ``Conv2d`` /
``Linear`` named in the policy for its quantized twin, built by the chosen quantizer
config (``conf/quantizer/<name>.yaml``).
"""
