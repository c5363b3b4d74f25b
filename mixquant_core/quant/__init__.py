"""Stage 2, the weights' error: quantizers (pure quantize/dequantize functions; min/max and
MSE-clipped ranges, the latter's search loop in ``clip_search``), a layer's integer codes on their
grid (``codes``: what export/ stores, round-to-nearest or learned) and the QE table, with its fast
kernels in ``kernels/``; activation quantization (``activations``: the uint8 grid and input hooks;
``act_calibration``: ranges calibrated on calibration images). Imports models/, data/ (the
calibration images' type) and errors only."""
from .qe import DEFAULT_BITS, QETable, qe_table
from .quantizers import QUANTIZERS, dequantize, fake_quantize, quantize

__all__ = ["DEFAULT_BITS", "QETable", "qe_table", "QUANTIZERS", "dequantize", "fake_quantize", "quantize"]
