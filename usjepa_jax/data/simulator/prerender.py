"""Pre-rendering simulator images into prepared shards (``config.data.source='prepared'``), for accelerator runs
where no CPU simulator keeps up."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from usjepa_jax.data import shards
from usjepa_jax.data.simulator.config import SimulatorConfig, jsonable
from usjepa_jax.data.simulator.source import SyntheticUltrasoundSource


def prerender(out: str | Path, num: int, config: SimulatorConfig = SimulatorConfig(), seed: int = 0,
              shard_size: int = 1024, progress: bool = True,
              source: SyntheticUltrasoundSource | None = None) -> dict[str, Any]:
    """Render ``SyntheticUltrasoundSource(num, seed, config)`` once into the prepared ArrayRecord format
    (``data/prepare.py``: shards, ``manifest.json``; one file row per image, dataset ``synthetic``, label = lesion
    class), for accelerator runs: train with ``config.data.source='prepared'``, ``config.data.paths=[out]``.
    ``source``: another simulator source to render instead (e.g. data/framing.py's mixture of framed views), whose
    own image count, seed and settings then apply."""

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if (out / shards.PROGRESS).exists() or (out / shards.MANIFEST).exists():
        raise FileExistsError(f"{out} already holds prepared data; pre-render into an empty directory")
    if source is None:
        source = SyntheticUltrasoundSource(num, seed, config)
    num, seed, config = len(source), source.seed, source.config
    start, shard = time.perf_counter(), None
    with open(out / shards.PROGRESS, "a") as progress_file:
        for i in range(num):
            if shard is None:
                shard = shards.ShardWriter(out, i // shard_size, shards.WRITER_OPTIONS, progress_file)
            ex = source[i]
            row = dict(dataset="synthetic", file=f"{i:08d}", label=int(ex["label"]), split="train_val")
            shard.add_file(row, [(ex["image"], ex["scan_mask"])], i)
            if shard.records == shard_size or i == num - 1:
                shard.close()
                shard = None
            if progress and (i + 1) % 500 == 0:
                print(f"[prerender] {i + 1}/{num} images, {(i + 1) / (time.perf_counter() - start):.0f}/s",
                      flush=True)
    settings = dict(source="synthetic", simulator=jsonable(dataclasses.asdict(config)), seed=seed, num=num,
                    view=repr(source))
    manifest = shards.write_manifest(out, {}, settings)
    assert manifest["total"]["frames"] == num
    return dict(out=str(out), images=num, shards=len(manifest["shards"]),
                seconds=round(time.perf_counter() - start, 2))
