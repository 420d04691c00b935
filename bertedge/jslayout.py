"""The transformers.js layout of a bundle (`export/quantize --layout transformers.js`).

transformers.js (`@huggingface/transformers`) loads a local model directory with
`pipeline(task, dir, {local_files_only: true})` when it holds `config.json` (model_type, id2label,
label2id), `tokenizer.json`, `tokenizer_config.json` and the graph under `onnx/`: `model.onnx` for
fp32, `model_quantized.onnx` for int8 (its dtype "q8"), `model_fp16.onnx` for fp16.

The layout is added to a normal bundle, never instead of it: `model.onnx` stays at the top, so
`bertedge.runtime.Bundle`, `predict`, `eval`, `bench` and `quantize` read the bundle as before. The
file under `onnx/` is a hard link to the top one (no second copy on disk; a copy where the
filesystem has no hard links). Copying the bundle with a tool that does not keep hard links
(`cp -r`, zip, an upload) stores the model twice.

Two files are adjusted for the JavaScript side, neither read by bertedge's own runtime:
- config.json gets `"transformers.js_config": {"dtype": ...}` so the pipeline picks the right file
  without a `dtype` option (int8 bundles would otherwise look for `onnx/model.onnx`);
- tokenizer_config.json gets `model_max_length` = the bundle's max_length, so transformers.js
  truncates where bertedge does (a base tokenizer often records no limit at all).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .errors import ArtifactError
from .tasks import get_task

LAYOUTS = ("bertedge", "transformers.js")
ONNX_DIR = "onnx"
# transformers.js dtype -> file name under onnx/ (its DEFAULT_DTYPE_SUFFIX_MAPPING).
FILE_OF_DTYPE = {"fp32": "model.onnx", "q8": "model_quantized.onnx", "fp16": "model_fp16.onnx"}
DTYPE_OF_PRECISION = {"fp32": "fp32", "int8": "q8", "fp16": "fp16"}


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"cannot read {path.name} ({exc})", where=str(path.parent),
                            fix="Re-export the bundle") from None


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def link_or_copy(src: Path, dst: Path) -> bool:
    """Hard-link `src` at `dst` (True), or copy it where links are not possible (False)."""
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
        return True
    except OSError:
        shutil.copyfile(src, dst)
        return False


def write_transformers_js_layout(bundle_dir: Path, *, precision: str, max_length: int, task: str,
                                 labels: list[str] | None) -> dict:
    """Add the transformers.js files to the bundle being written at `bundle_dir`; returns the manifest record."""
    bundle_dir = Path(bundle_dir)
    dtype = DTYPE_OF_PRECISION[precision]
    onnx_dir = bundle_dir / ONNX_DIR
    if onnx_dir.exists():
        shutil.rmtree(onnx_dir)
    onnx_dir.mkdir()
    name = FILE_OF_DTYPE[dtype]
    linked = link_or_copy(bundle_dir / "model.onnx", onnx_dir / name)

    config_path = bundle_dir / "config.json"
    if not config_path.is_file():
        raise ArtifactError("the bundle has no config.json, which transformers.js needs", where=str(bundle_dir),
                            fix="Re-export the bundle with this bertedge")
    config = _read_json(config_path)
    config.setdefault("model_type", "bert")
    if get_task(task).label_set and labels:
        # The pipeline names classes from id2label; keep them equal to the labels bertedge predicts.
        config["id2label"] = {str(i): label for i, label in enumerate(labels)}
        config["label2id"] = {label: i for i, label in enumerate(labels)}
    js_config = dict(config.get("transformers.js_config") or {})
    js_config["dtype"] = dtype
    config["transformers.js_config"] = js_config
    _write_json(config_path, config)

    tokenizer_config_path = bundle_dir / "tokenizer_config.json"
    tokenizer_config = _read_json(tokenizer_config_path) if tokenizer_config_path.is_file() else {}
    tokenizer_config["model_max_length"] = int(max_length)
    _write_json(tokenizer_config_path, tokenizer_config)
    return {"layout": "transformers.js", "model": f"{ONNX_DIR}/{name}", "dtype": dtype, "hard_link": linked,
            "load": f"pipeline('{task}', BUNDLE_DIR, {{local_files_only: true}})"}
