"""The peer path: what a user gets from the standard tools alone, without bertedge, on the stack they have.

Two recipes, one per stack, each built through the tools' public APIs:

- `optimum` (where optimum-onnx is installed, the legacy stack): optimum's
  ORTModelFor<Task>.from_pretrained(export=True) exports the teacher, and ORTQuantizer with
  AutoQuantizationConfig.avx2(is_static=False) quantizes it to dynamic int8.
- `ort` (transformers 5, where optimum-onnx cannot be installed): `torch.onnx.export` of the teacher as
  transformers loads it (TorchScript exporter, dynamic batch and sequence axes), ONNX Runtime's transformer
  optimizer, then `onnxruntime.quantization.quantize_dynamic` with its defaults plus the one option its
  error message asks for on a fused graph (DefaultTensorType=FLOAT: ONNX shape inference cannot type the
  outputs of com.microsoft ops). The optimizer step is what
  ONNX Runtime's quantization guide asks for transformer models ("Transformer-based models": optimize with
  the Transformer Model Optimization Tool before quantizing, so that attention can become QAttention;
  onnxruntime.ai/docs/performance/model-optimizations/quantization.html).

Reports measure bertedge's artifacts against the peer in the same run and name the one they measured, so
"faster than the peer" means faster than that recipe.
"""

from __future__ import annotations

import contextlib
import shutil
import sys
from pathlib import Path

from .artifacts import Artifact
from .errors import ArtifactError, ConfigError

PEERS = ("optimum", "ort")
PEER_NAMES = {"optimum": "peer: optimum+ORT int8", "ort": "peer: torch.onnx+ORT int8"}
PEER_METHODS = {
    "optimum": "optimum's ONNX export of the teacher quantized by optimum's ORTQuantizer (dynamic int8, avx2 preset)",
    "ort": "torch.onnx.export of the teacher (TorchScript, dynamic axes), ONNX Runtime's transformer optimizer, "
           "then onnxruntime.quantization.quantize_dynamic (defaults: dynamic int8, QInt8 weights; "
           "DefaultTensorType=FLOAT for the fused ops)",
}
ORT_MODEL_CLASSES = {
    "text-classification": "ORTModelForSequenceClassification",
    "token-classification": "ORTModelForTokenClassification",
    "question-answering": "ORTModelForQuestionAnswering",
}


def default_peer() -> str:
    """The peer a report measures here: optimum's where optimum-onnx is installed, plain ONNX Runtime's else."""
    from . import env

    return "optimum" if env.optimum_installed() else "ort"


def build_peer(teacher: Artifact, out_dir: str | Path, kind: str | None = None) -> dict:
    """Build the peer path `kind` (default: `default_peer()`) of `teacher` in `out_dir`.

    Returns {"kind", "name", "method", "fp32": Path, "int8": Path}; the tokenizer files sit beside the graphs.
    """
    kind = kind or default_peer()
    if kind not in PEERS:
        raise ConfigError(f"unknown peer '{kind}'", where="peer", fix=f"Use one of {', '.join(PEERS)}")
    if teacher.is_bundle:
        raise ArtifactError("the peer path starts from the PyTorch teacher, not a bundle", where=str(teacher.path),
                            fix="Pass the fine-tuned PyTorch artifact")
    out_dir = Path(out_dir)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    files = _optimum_peer(teacher, out_dir) if kind == "optimum" else _ort_peer(teacher, out_dir)
    return {"kind": kind, "name": PEER_NAMES[kind], "method": PEER_METHODS[kind], **files}


def _optimum_peer(teacher: Artifact, out_dir: Path) -> dict[str, Path]:
    from transformers import AutoTokenizer

    from .stages.exporters import import_optimum

    ort_optimum = import_optimum("optimum.onnxruntime", "peer: optimum")
    configuration = import_optimum("optimum.onnxruntime.configuration", "peer: optimum")
    model_class = getattr(ort_optimum, ORT_MODEL_CLASSES[teacher.task])
    with contextlib.redirect_stdout(sys.stderr):  # optimum prints progress; stdout belongs to --json
        model = model_class.from_pretrained(str(teacher.path), export=True)
        model.save_pretrained(out_dir)
        AutoTokenizer.from_pretrained(str(teacher.path)).save_pretrained(out_dir)
        quantizer = ort_optimum.ORTQuantizer.from_pretrained(out_dir, file_name="model.onnx")
        quantizer.quantize(save_dir=out_dir,
                           quantization_config=configuration.AutoQuantizationConfig.avx2(is_static=False))
    int8 = out_dir / "model_quantized.onnx"
    if not int8.is_file():
        candidates = sorted(out_dir.glob("*quantized*.onnx"))
        if not candidates:
            raise ArtifactError("optimum's ORTQuantizer wrote no quantized model", where=str(out_dir),
                                fix="Check the optimum and onnxruntime versions (bertedge info)")
        int8 = candidates[0]
    return {"fp32": out_dir / "model.onnx", "int8": int8}


def _ort_peer(teacher: Artifact, out_dir: Path) -> dict[str, Path]:
    """What the ONNX Runtime docs lead a transformers 5 user to: export, optimize, quantize_dynamic."""
    import onnx
    from onnxruntime.quantization import quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model
    from transformers import AutoTokenizer

    from .modeling import model_class, save_tokenizer
    from .stages.exporters import export_onnx, graph_input_names, stdout_to_stderr
    from .tasks import get_task

    tokenizer = AutoTokenizer.from_pretrained(str(teacher.path))
    model = model_class(teacher.task).from_pretrained(str(teacher.path)).eval()  # transformers' default attention
    save_tokenizer(tokenizer, out_dir)
    raw = export_onnx(model, get_task(teacher.task), graph_input_names(model, tokenizer.model_input_names), 17,
                      out_dir / "export")
    fp32, int8 = out_dir / "model.onnx", out_dir / "model_quantized.onnx"
    with stdout_to_stderr():
        optimized = optimize_model(str(raw), model_type="bert", num_heads=model.config.num_attention_heads,
                                   hidden_size=model.config.hidden_size)
        optimized.save_model_to_file(str(fp32))
        quantize_dynamic(str(fp32), str(int8), extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    shutil.rmtree(out_dir / "export", ignore_errors=True)
    if not int8.is_file():
        raise ArtifactError("onnxruntime's quantize_dynamic wrote no quantized model", where=str(out_dir),
                            fix="Check the onnxruntime version (bertedge info)")
    return {"fp32": fp32, "int8": int8}
