"""The peer path: what a user gets from optimum + ONNX Runtime alone, built through optimum's public API.

optimum's ORTModelFor<Task>.from_pretrained(export=True) exports the teacher, and ORTQuantizer with
AutoQuantizationConfig.avx2(is_static=False) quantizes it to dynamic int8. Reports measure bertedge's
artifacts against this in the same run, so "faster than the peer" means faster than that recipe.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from .artifacts import Artifact
from .errors import ArtifactError

ORT_MODEL_CLASSES = {
    "text-classification": "ORTModelForSequenceClassification",
    "token-classification": "ORTModelForTokenClassification",
    "question-answering": "ORTModelForQuestionAnswering",
}


def build_peer(teacher: Artifact, out_dir: str | Path) -> dict[str, Path]:
    """Export `teacher` with optimum and quantize it with ORTQuantizer (dynamic int8, avx2 preset).

    Returns {"fp32": model.onnx, "int8": model_quantized.onnx}; the tokenizer files sit beside them.
    """
    if teacher.is_bundle:
        raise ArtifactError("the peer path starts from the PyTorch teacher, not a bundle", where=str(teacher.path),
                            fix="Pass the fine-tuned PyTorch artifact")
    import optimum.onnxruntime as ort_optimum
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig
    from transformers import AutoTokenizer

    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model_class = getattr(ort_optimum, ORT_MODEL_CLASSES[teacher.task])
    with contextlib.redirect_stdout(sys.stderr):  # optimum prints progress; stdout belongs to --json
        model = model_class.from_pretrained(str(teacher.path), export=True)
        model.save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(str(teacher.path)).save_pretrained(out_dir)
        quantizer = ORTQuantizer.from_pretrained(out_dir, file_name="model.onnx")
        quantizer.quantize(save_dir=out_dir, quantization_config=AutoQuantizationConfig.avx2(is_static=False))
    int8 = out_dir / "model_quantized.onnx"
    if not int8.is_file():
        candidates = sorted(out_dir.glob("*quantized*.onnx"))
        if not candidates:
            raise ArtifactError("optimum's ORTQuantizer wrote no quantized model", where=str(out_dir),
                                fix="Check the optimum and onnxruntime versions (bertedge info)")
        int8 = candidates[0]
    return {"fp32": out_dir / "model.onnx", "int8": int8}
