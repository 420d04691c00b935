"""Backends that run one target: ONNX Runtime (any provider, IO binding on GPUs) and PyTorch eager.

A runner loads its model once; `prepare(batch)` turns a numpy batch into a zero-argument call
that runs one synchronous inference, so the timing loop measures the model and nothing else
(inputs are already converted, on the device, and bound).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import BenchError
from ..providers import PROVIDER_PACKAGE, make_session, provider_name
from .targets import ONNX, TORCH_INC, TORCH_INT8, Target

GPU_PROVIDERS = ("cuda", "tensorrt")
ORT_DTYPES = {"tensor(int64)": np.int64, "tensor(int32)": np.int32}


def trt_profile_options(input_names: list[str], max_batch: int, max_seq: int) -> dict:
    """TensorRT optimisation profile covering every benchmarked shape: min 1x1, opt = max = the largest.

    Without an explicit profile TensorRT builds an engine per new shape in the middle of the timing
    loop; with one it builds once (and the engine cache keeps it across runs).
    """
    def shapes(b: int, s: int) -> str:
        return ",".join(f"{name}:{b}x{s}" for name in input_names)

    return {"trt_profile_min_shapes": shapes(1, 1), "trt_profile_opt_shapes": shapes(max_batch, max_seq),
            "trt_profile_max_shapes": shapes(max_batch, max_seq)}


class OrtRunner:
    """An InferenceSession from `providers.make_session` (active provider verified there)."""

    def __init__(self, target: Target, provider: str, threads: int | None, *, max_batch: int = 1,
                 max_seq: int = 128, trt_cache_dir: str | Path | None = None, io_binding: bool | None = None,
                 spinning: bool | None = False, cpu_mem_arena: bool | None = None, mem_pattern: bool | None = None):
        import onnxruntime as ort

        self.ort = ort
        self.provider = provider.lower().strip()
        trt_options = None
        if self.provider == "tensorrt":
            names = _onnx_input_names(target.model_file)
            trt_options = trt_profile_options(names, max_batch, max_seq)
        self.session = make_session(target.model_file, provider, threads=threads, trt_cache_dir=trt_cache_dir,
                                    trt_options=trt_options, spinning=spinning, cpu_mem_arena=cpu_mem_arena,
                                    mem_pattern=mem_pattern)
        self.session_options = {"spinning": spinning, "cpu_mem_arena": cpu_mem_arena, "mem_pattern": mem_pattern}
        self.inputs = {i.name: ORT_DTYPES.get(i.type, np.int64) for i in self.session.get_inputs()}
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.active_providers = list(self.session.get_providers())
        # On GPUs inputs are copied to the device once and outputs stay there: the timing is the model,
        # not PCIe transfers. `io_binding=True` on CPU exercises the same code path (tests).
        self.io_binding = self.provider in GPU_PROVIDERS if io_binding is None else io_binding
        self.device = "cuda" if self.provider in GPU_PROVIDERS else "cpu"
        self.threads = threads

    def feed(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        missing = [name for name in self.inputs if name not in batch]
        if missing:
            raise BenchError(f"the model wants inputs the tokenizer does not give: {', '.join(missing)}",
                             where="model.onnx", fix="Re-export the bundle with bertedge export")
        return {name: np.ascontiguousarray(batch[name], dtype=dtype) for name, dtype in self.inputs.items()}

    def prepare(self, batch: dict[str, np.ndarray]) -> Callable[[], object]:
        feed = self.feed(batch)
        if not self.io_binding:
            session, outputs = self.session, self.outputs
            return lambda: session.run(outputs, feed)
        binding = self.session.io_binding()
        keep = []
        for name, array in feed.items():
            value = self.ort.OrtValue.ortvalue_from_numpy(array, self.device, 0)
            keep.append(value)
            binding.bind_ortvalue_input(name, value)
        for name in self.outputs:
            binding.bind_output(name, self.device)
        session = self.session

        def call():
            session.run_with_iobinding(binding)
            binding.synchronize_outputs()
            return binding  # outputs stay on the device; copy_outputs_to_cpu() reads them

        call.inputs = keep  # type: ignore[attr-defined]  # OrtValues must outlive the binding

        return call


class TorchRunner:
    """Eager PyTorch (fp32), or its dynamic int8 variant (torch.ao quantize_dynamic on nn.Linear)."""

    def __init__(self, target: Target, provider: str, threads: int | None):
        import torch

        from ..artifacts import load_artifact
        from ..modeling import load_torch_artifact

        self.torch = torch
        self.provider = provider.lower().strip()
        if self.provider == "tensorrt":
            raise BenchError("TensorRT runs ONNX bundles only, and this is a PyTorch artifact",
                             where=str(target.path),
                             fix="Export it first (bertedge export) or use --provider cpu or cuda")
        if self.provider == "cuda" and not torch.cuda.is_available():
            raise BenchError("provider 'cuda' was requested for a PyTorch artifact but this torch build "
                             "sees no CUDA device", where="--provider",
                             fix="Install a CUDA build of torch (pip install torch --index-url "
                                 "https://download.pytorch.org/whl/cu124) on a GPU machine, or use --provider cpu")
        if target.backend == TORCH_INC and self.provider != "cpu":
            raise BenchError("a Neural Compressor int8 program runs on CPU only", where=str(target.path),
                             fix="Use --provider cpu")
        if target.backend == TORCH_INT8 and self.provider != "cpu":
            raise BenchError("torch dynamic int8 runs on CPU only", where="--torch-int8",
                             fix="Drop --torch-int8 or use --provider cpu")
        if threads:
            torch.set_num_threads(int(threads))
        self.threads = torch.get_num_threads()
        model, _ = load_torch_artifact(load_artifact(target.path))
        target.parameters = sum(p.numel() for p in model.parameters())  # int8: the same weights, packed
        self.model_input_names = ("input_ids", "attention_mask", "token_type_ids")
        if target.backend == TORCH_INT8:
            from torch.ao.quantization import quantize_dynamic

            from .flops import torch_flop_model

            # FlopCounterMode does not see quantized::linear_dynamic: count on the fp32 model (same math).
            self.flop_model = torch_flop_model(model, self.model_input_names)
            model = quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
            buffer = io.BytesIO()
            torch.save(model.state_dict(), buffer)
            target.size_bytes = buffer.getbuffer().nbytes
        if target.backend == TORCH_INC:
            # PT2E int8 is Q/DQ around fp32 ops: inductor (with freezing) turns it into int8 kernels.
            # Compilation happens on the first calls, i.e. in the warmup rounds.
            model.compile()
        self.device = torch.device("cuda" if self.provider == "cuda" else "cpu")
        self.model = model.to(self.device).eval()
        self.active_providers = ["torch:" + self.device.type]

    def prepare(self, batch: dict[str, np.ndarray]) -> Callable[[], object]:
        torch, model = self.torch, self.model
        inputs = {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.int64)).to(self.device)
                  for k, v in batch.items() if k in self.model_input_names}
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)

        def call():
            with torch.inference_mode():
                out = model(**inputs)
            sync()
            return out

        return call


def make_runner(target: Target, provider: str, threads: int | None, **ort_kwargs):
    provider_name(provider)  # unknown names fail the same way for every backend
    if target.backend == ONNX:
        return OrtRunner(target, provider, threads, **ort_kwargs)
    return TorchRunner(target, provider, threads)


def _onnx_input_names(model_file: Path | None) -> list[str]:
    import onnx

    model = onnx.load(str(model_file), load_external_data=False)
    initializers = {init.name for init in model.graph.initializer}
    return [value.name for value in model.graph.input if value.name not in initializers]


__all__ = ["GPU_PROVIDERS", "PROVIDER_PACKAGE", "OrtRunner", "TorchRunner", "make_runner", "trt_profile_options"]
