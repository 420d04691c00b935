"""`torchrun ... tests/ddp_probe.py ARGS`: run `bertedge ARGS` on every rank with probes that record, per rank,
into $PROBE_DIR/rank-N.json:

- loaded: every model `bertedge.modeling.load_torch_artifact` returned (the KD teacher; prune's parent), with its
  `training` flag and whether DDP wrapped it, sampled after every training step;
- wrapped: the classes DDP wrapped;
- trained: after each `train_model` call, a checksum of the trained model's and of every extra module's parameters
  (so the test can compare the ranks: DDP keeps them identical);
- world_size as the process saw it.

Not a test module (no test_ prefix): test_distributed.py starts it through torchrun.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import transformers

import bertedge.modeling
import bertedge.train

RECORD: dict = {"rank": int(os.environ.get("RANK", "0")), "world_size": int(os.environ.get("WORLD_SIZE", "1")),
                "loaded": [], "wrapped": [], "trained": [], "steps": 0}
_loaded: list = []  # (label, model)
_wrapped_ids: set[int] = set()


def _checksum(module) -> str:
    digest = hashlib.sha256()
    for name, param in sorted(module.state_dict().items()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().contiguous().float().numpy().tobytes())
    return digest.hexdigest()[:16]


_real_load = bertedge.modeling.load_torch_artifact


def _load(artifact, **kwargs):
    model, tokenizer = _real_load(artifact, **kwargs)
    _loaded.append((str(artifact.path), model))
    return model, tokenizer


bertedge.modeling.load_torch_artifact = _load

_real_ddp_init = torch.nn.parallel.DistributedDataParallel.__init__


def _ddp_init(self, module, *args, **kwargs):
    _wrapped_ids.add(id(module))
    RECORD["wrapped"].append(type(module).__name__)
    _real_ddp_init(self, module, *args, **kwargs)


torch.nn.parallel.DistributedDataParallel.__init__ = _ddp_init

_real_step = transformers.Trainer.training_step


def _training_step(self, *args, **kwargs):
    # Sampled after the step: transformers 5 puts the model in train mode inside training_step (4.x before it).
    loss = _real_step(self, *args, **kwargs)
    RECORD["steps"] += 1
    for label, model in _loaded:
        RECORD["loaded"].append({"path": label, "training": model.training, "wrapped": id(model) in _wrapped_ids,
                                 "is_trained_model": model is self.model})
    RECORD.setdefault("trainer_model_wrapped", []).append(type(self.model_wrapped).__name__)
    return loss


transformers.Trainer.training_step = _training_step

_real_train = bertedge.train.train_model


def _train_model(model, *args, **kwargs):
    result = _real_train(model, *args, **kwargs)
    RECORD["trained"].append({"model": _checksum(model),
                              "extra": [_checksum(m) for m in kwargs.get("extra_modules") or []]})
    return result


bertedge.train.train_model = _train_model


def _write() -> None:
    out = Path(os.environ["PROBE_DIR"]) / f"rank-{RECORD['rank']}.json"
    out.write_text(json.dumps(RECORD, indent=1))


atexit.register(_write)

if __name__ == "__main__":
    from bertedge.cli import main

    code = main(sys.argv[1:])
    _write()
    sys.exit(code)
