"""quantize: int8 (dynamic or static QDQ) or fp16 versions of an exported ONNX bundle, with an accuracy gate
(`mode="auto"`) that picks the fastest candidate within a metric budget; or, with `engine="inc"`, Intel
Neural Compressor int8 of a PyTorch artifact.

One module per engine and concern:

- `config`: QuantizeConfig, one config for both engines (its `engine` field picks one).
- `stage`: the stage itself, `quantize()`, and the run that builds, scores and times candidates.
- `schemes`: presets per target CPU and `Scheme`, one way to quantize a graph.
- `ort_int8`: ONNX Runtime int8 (one quantization, graph facts, calibration, sensitivity, timing).
- `fp16`: the fp16 conversion and its overflow / divergence checks.
- `gate`: `Candidate` and the accuracy gate's choice.
- `manifest`: the bundle's manifest record and quantize_report.md.
- `inc`: Neural Compressor (PyTorch int8).
"""

from .config import SHARED_FIELDS, QuantizeConfig
from .gate import Candidate, candidate_verdict, choose_candidate
from .manifest import MODEL_FILE, PARENT_ONLY_KEYS
from .stage import REPORT_FILE, quantize

__all__ = ["MODEL_FILE", "PARENT_ONLY_KEYS", "REPORT_FILE", "SHARED_FIELDS", "Candidate", "QuantizeConfig",
           "candidate_verdict", "choose_candidate", "quantize"]
