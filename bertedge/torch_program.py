"""A saved `torch.export` program (`model.pt2`, what `quantize --engine inc` writes) behind the transformers-like
call the rest of bertedge uses, so loading an artifact needs no quantization stage.

The manifest's `torch_program` record names the file and the program's input and output names.
"""

from __future__ import annotations

from .artifacts import Artifact
from .errors import ArtifactError

PROGRAM_FILE = "model.pt2"


def program_forward(module, inputs: list[str], outputs: list[str]):
    """numpy-in, numpy-out forward over a (quantized) program, for the task evaluation loop."""
    import torch

    def forward(batch):
        with torch.no_grad():
            result = module(*(torch.from_numpy(batch[n]) for n in inputs))
        return {name: value.float().numpy() for name, value in zip(outputs, result)}

    return forward


class ProgramModel:
    """A saved Neural Compressor program behind the transformers-like call the rest of bertedge uses
    (`model(**inputs)` -> mapping of output name to tensor)."""

    def __init__(self, artifact: Artifact):
        import torch
        import torchao  # noqa: F401 - registers the quantized_decomposed ops the program calls

        record = artifact.manifest["torch_program"]
        path = artifact.path / record["file"]
        if not path.is_file():
            raise ArtifactError(f"{record['file']} is missing", where=str(artifact.path),
                                fix="Re-run `bertedge quantize --engine inc`")
        self.inputs, self.outputs = list(record["inputs"]), list(record["outputs"])
        self.module = torch.export.load(str(path)).module()
        self.compiled = False

    def compile(self) -> None:
        import torch
        from torch._inductor import config as inductor_config

        inductor_config.freezing = True
        self.module = torch.compile(self.module)
        self.compiled = True

    def __call__(self, **inputs):
        result = self.module(*(inputs[n] for n in self.inputs))
        return dict(zip(self.outputs, result))

    def parameters(self):
        import itertools

        return itertools.chain(self.module.parameters(), self.module.buffers())

    def eval(self):
        return self

    def to(self, device):
        return self
