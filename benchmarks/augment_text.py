"""Write an augmented, unlabeled transfer set for `bertedge distill --unlabeled` (Tang et al., 2019 rules).

For a classification dataset's train split, each example gives up to --copies new inputs
(mask a word with the teacher's mask token p=0.1, swap it for a frequency-drawn train word
p=0.1, then cut single sentences to a random 1-5-gram p=0.25; see bertedge/augment.py).
The teacher soft-labels them during distillation. The file is derived from the dataset, so it
goes to the cache ($BERTEDGE_CACHE/augment/), never into the repo. Usage:

    python benchmarks/augment_text.py --data sst2 --teacher RUN/artifacts/teacher --copies 1
    bertedge distill --teacher RUN/artifacts/teacher ... --unlabeled ~/.cache/bertedge/augment/sst2-x1-seed42.txt
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks._common import cache_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="sst2", help="classification data (a name under the data root, or a directory)")
    parser.add_argument("--teacher", type=Path, required=True, help="the teacher artifact (its tokenizer's mask token)")
    parser.add_argument("--copies", type=int, default=1, help="augmented copies per train example")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, help="output .txt (default: $BERTEDGE_CACHE/augment/DATA-xN-seedS.txt)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from bertedge.augment import augment_examples, write_unlabeled
    from bertedge.data import load_data

    data = load_data(args.data, "text-classification", need=("train",))
    train = data.split("train")
    mask = AutoTokenizer.from_pretrained(str(args.teacher)).mask_token
    if not mask:
        sys.exit(f"error: {args.teacher}: the teacher's tokenizer has no mask token")
    out = args.out or cache_dir() / "augment" / f"{Path(args.data).name}-x{args.copies}-seed{args.seed}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    examples = augment_examples(train, copies=args.copies, seed=args.seed, mask_token=mask)
    tmp = out.with_name(out.name + ".tmp")
    count = write_unlabeled(examples, tmp)
    os.replace(tmp, out)
    record = {"data": data.source.get("path"), "train_examples": len(train), "copies": args.copies, "seed": args.seed,
              "mask_token": mask, "written": count, "file": str(out)}
    out.with_suffix(".json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(record))


if __name__ == "__main__":
    main()
