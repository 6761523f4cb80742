"""Labelled demo tasks in the real-data layouts, written from simulator images (no real ultrasound can be downloaded
here): try ``python -m usjepa_jax.evaluate --tasks=...`` on them before pointing it at your own data.

    python scripts/make_demo_tasks.py --out /tmp/demo_tasks [--num 600] [--size 128]

writes

- ``OUT/geometry_v1/``: the UltraBench layout (``images/``, ``masks/scan/``, ``train_val.json``, ``test.json`` with
  records ``{"image", "label"}``), label = the probe geometry (linear / sector / curvilinear), 20% in test.json;
- ``OUT/lesion_folders/<none|lesion>/*.png``: class folders, label = whether the phantom has a lesion (the
  simulator's lesion class ``none`` against the other four);
- ``OUT/overlay.csv`` + ``OUT/overlay/*.png``: a CSV list ``path,label,group``, label = whether annotations are
  burned in, three images of one anatomy (three speckle seeds) per ``group``, so a group must stay in one split.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from usjepa_jax.data.synthetic import SimulatorConfig, render


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--num", type=int, default=600, help="images per task")
    p.add_argument("--size", type=int, default=128, help="rendered image size")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    out = Path(a.out)
    cfg = SimulatorConfig(image_size=a.size)

    ub = out / "geometry_v1"
    (ub / "images").mkdir(parents=True, exist_ok=True)
    (ub / "masks" / "scan").mkdir(parents=True, exist_ok=True)
    records = {"train_val": [], "test": []}
    for i in range(a.num):
        r = render(a.seed * 1_000_003 + i, i, cfg)
        name = f"{i:05d}.png"
        Image.fromarray(r["image"]).save(ub / "images" / name)
        Image.fromarray(r["scan_mask"].astype("uint8") * 255).save(ub / "masks" / "scan" / name)
        records["test" if i % 5 == 4 else "train_val"].append({"image": name, "label": r["params"]["geometry"]})
    for split, recs in records.items():
        (ub / f"{split}.json").write_text(json.dumps(recs, indent=0))

    folders = out / "lesion_folders"
    for i in range(a.num):
        r = render(a.seed * 1_000_003 + 100_000 + i, i, cfg)
        label = "none" if r["label"] == 0 else "lesion"
        (folders / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray(r["image"]).save(folders / label / f"{i:05d}.png")

    (out / "overlay").mkdir(parents=True, exist_ok=True)
    with open(out / "overlay.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "group"])
        for i in range(a.num):
            anatomy = a.seed * 1_000_003 + 200_000 + i // 3
            r = render(anatomy, i, cfg)
            Image.fromarray(r["image"]).save(out / "overlay" / f"{i:05d}.png")
            w.writerow([f"overlay/{i:05d}.png", "overlay" if r["params"]["overlay"] else "clean", f"a{i // 3}"])
    print(f"wrote {ub}, {folders}, {out / 'overlay.csv'} ({a.num} images each)")


if __name__ == "__main__":
    main()
