"""Stages: each has one public function `STAGE(src, config, out) -> Artifact`."""
