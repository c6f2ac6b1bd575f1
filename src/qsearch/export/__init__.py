"""Export of quantized models: bit-packed qpack files and ONNX QDQ graphs.

``qsearch export`` writes either from a quantized checkpoint; see :mod:`.qpack` for the
file format and :mod:`.onnx_export` for the ONNX graph.
"""
