"""Decode and preprocess real ultrasound once, into ArrayRecord shards that training reads fast.

    python -m usjepa_jax.data.prepare --input /data/busi_v1 --input /data/echo_dicoms --output /data/prepared \
        [--workers N] [--size 224] [--shard-size 1024] [--on-error skip|raise] [--include-test] \
        [--video-stride K] [--h5-key KEY] [--nifti-axis A]

Inputs may mix formats (image folders, DICOM incl. cine loops, NIfTI, cine video ``.avi/.mp4`` with
``--video-stride``, HDF5 with ``--h5-key``, MetaImage ``.mhd/.raw``, UltraBench dataset folders or a folder of them:
``decoders.py``, ``containers.py``, ``scanning.py``); files of other extensions are counted by extension in the
manifest (``unread``) and the log, and an input without any readable frame fails naming it. Each input folder is one dataset named after the
folder (an UltraBench folder: its own name). Files are decoded and preprocessed (``preprocess.py``: grayscale,
inpainting, scan region, percentile rescaling, crop, resize to ``--size``) in ``--workers`` processes; the main
process writes the frames to ``shard-NNNNN.array_record`` files (one record per frame, ``shards.encode_record``:
header + uint8 image + bit-packed scan mask) and, when a shard is complete and closed, appends its files to
``progress.jsonl``. A file's frames never straddle shards.

Resume: an interrupted run (Ctrl-C, kill, crash) loses at most the open shard; rerunning the same command deletes
shards that ``progress.jsonl`` does not list and continues with the files it does not list (finished files are
not decoded again). The settings (size, preprocessing) of a rerun must match the first run's.

At the end ``manifest.json`` lists per dataset its files, frames and skipped files with reasons, the shards, and
one row per file (dataset, relative path, shard, first record, frames, label, split), sorted by (dataset, file) so
the frame order does not depend on worker timing. UltraBench ``test.json`` files are left out unless
``--include-test`` (a benchmark's test images must not leak into pretraining). Train with
``config.data.source='prepared'``, ``config.data.paths=[DIR]`` (``configs/folder.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import multiprocessing
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from usjepa_jax import run_log
from usjepa_jax.data import preprocess as pp
from usjepa_jax.data.decoders import (DEFAULT_FRAME_OPTIONS, BadFileError, FrameOptions, file_region, iter_frames,
                                      read_mask)
from usjepa_jax.data.scanning import ON_ERROR, DatasetScan, NoFramesError, describe_extensions, scan_input
from usjepa_jax.data.shards import (PROGRESS, SHARD_SUFFIX, VERSION, WRITER_OPTIONS, ShardWriter, append_line,
                                    read_progress, write_manifest)

log = logging.getLogger(__name__)


def _process(task: tuple) -> tuple[int, list | None, str | None]:
    """Worker: decode + preprocess every frame of one file -> (task id, [(image, mask), ...] or None, error)."""
    tid, path, kind, mask_path, prep, options = task
    try:
        mask, region = read_mask(mask_path), file_region(path, kind)
        frames = [pp.preprocess_frame(f, prep, mask, region) for f in iter_frames(path, kind, options)]
        if not frames:
            raise BadFileError("no frames")
        return tid, frames, None
    except Exception as exc:  # noqa: BLE001 - any decoder error is a bad file
        return tid, None, f"{type(exc).__name__}: {exc}"


def prepare(inputs: list[str], output: str, *, workers: int = 0, size: int = 224, shard_size: int = 1024,
            on_error: str = "skip", preprocess: pp.PreprocessConfig | dict | None = None,
            frame_options: FrameOptions = DEFAULT_FRAME_OPTIONS, include_test: bool = False,
            options: str = WRITER_OPTIONS, progress: bool = True) -> dict[str, Any]:
    """Prepare (or continue preparing) ``output`` from ``inputs``; returns the manifest. An input without any
    readable frame fails (``sources.NoFramesError``, naming it and the extensions it holds)."""
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error={on_error!r}: expected one of {ON_ERROR}")
    scans: dict[str, DatasetScan] = {}
    for path in inputs:
        for scan in scan_input(path, on_error, frame_options):
            if scan.name in scans:
                raise ValueError(f"two inputs give the dataset name {scan.name!r} ({scans[scan.name].root} and "
                                 f"{scan.root}): rename one folder.")
            scans[scan.name] = scan
    return prepare_scans(scans, output, workers=workers, size=size, shard_size=shard_size, on_error=on_error,
                         preprocess=preprocess, frame_options=frame_options, include_test=include_test,
                         options=options, progress=progress)


def prepare_scans(scans: dict[str, DatasetScan], output: str | Path, *, workers: int = 0, size: int = 224,
                  shard_size: int = 1024, on_error: str = "skip", preprocess: pp.PreprocessConfig | dict | None = None,
                  frame_options: FrameOptions = DEFAULT_FRAME_OPTIONS, include_test: bool = False,
                  options: str = WRITER_OPTIONS, progress: bool = True, extra_settings: dict | None = None
                  ) -> dict[str, Any]:
    """Prepare already scanned datasets (``prepare`` after its scan; labelled evaluation tasks, whose files and
    labels come from their own layouts). ``extra_settings`` join the settings a rerun must match."""
    prep = preprocess if isinstance(preprocess, pp.PreprocessConfig) else pp.PreprocessConfig.from_dict(preprocess)
    prep = dataclasses.replace(prep, size=int(size))
    prep_dict = {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(prep).items()}
    settings = {"version": VERSION, "size": int(size), "preprocess": prep_dict, "frames": frame_options.to_dict(),
                "include_test": bool(include_test), **(extra_settings or {})}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)

    # ---- state of a previous run: finished shards and skipped files; partial shards are removed.
    records = read_progress(out)
    config_rec = next((r for r in records if r.get("type") == "config"), None)
    if config_rec is not None and config_rec["settings"] != settings:
        raise ValueError(f"{out} was prepared with other settings {config_rec['settings']} (now {settings}); "
                         "use a new output directory.")
    shards = [r for r in records if r.get("type") == "shard"]
    done = {(f["dataset"], f["file"]) for s in shards for f in s["files"]}
    failed = {(r["dataset"], r["file"]): r["reason"] for r in records if r.get("type") == "skipped"}
    listed = {s["name"] for s in shards}
    for p in out.glob(f"shard-*{SHARD_SUFFIX}"):
        if p.name not in listed:
            p.unlink()
    next_shard = 1 + max((int(s["name"][6:11]) for s in shards), default=-1)

    # ---- the files still to do.
    tasks, rows = [], []
    for scan in scans.values():
        for e in scan.entries:
            key = (scan.name, e.relpath)
            if (e.split == "test" and not include_test) or key in done or key in failed:
                continue
            rows.append({"dataset": scan.name, "file": e.relpath, "label": e.label, "split": e.split,
                         **({"group": e.group} if e.group else {})})
            tasks.append((len(tasks), e.path, e.kind, e.mask_path, prep, frame_options))
    total_frames = sum(e.frames for s in scans.values() for e in s.entries
                       if (s.name, e.relpath) not in done and (s.name, e.relpath) not in failed
                       and (e.split != "test" or include_test))

    # ---- decode in parallel, write shards in the main process.
    meter = run_log.progress(total_frames, "[prepare]", "frames", enabled=progress)
    start, files_done = time.perf_counter(), 0

    def count(frames: int) -> None:
        nonlocal files_done
        files_done += 1
        meter.set_postfix_str(f"{files_done}/{len(tasks)} files", refresh=False)
        meter.update(frames)
    with open(out / PROGRESS, "a") as pf:
        if config_rec is None:
            append_line(pf, {"type": "config", "settings": settings})
        shard = None
        pool = None
        try:
            if workers > 0 and tasks:
                method = "spawn" if "jax" in sys.modules else "fork"
                pool = multiprocessing.get_context(method).Pool(workers)
                results = pool.imap_unordered(_process, tasks, chunksize=1)
            else:
                results = map(_process, tasks)
            for tid, frames, error in results:
                row = rows[tid]
                if error is not None:
                    if on_error == "raise":
                        raise BadFileError(f"{row['dataset']}/{row['file']}: {error}")
                    log.warning("skipping %s/%s: %s", row["dataset"], row["file"], error)
                    append_line(pf, {"type": "skipped", "dataset": row["dataset"], "file": row["file"],
                                     "reason": error})
                    failed[(row["dataset"], row["file"])] = error
                    count(0)
                    continue
                if shard is None:
                    shard = ShardWriter(out, next_shard, options, pf)
                    next_shard += 1
                shard.add_file(row, frames, zlib.crc32(f"{row['dataset']}/{row['file']}".encode()))
                count(len(frames))
                if shard.records >= shard_size:
                    shard.close()
                    shard = None
            if shard is not None:
                shard.close()
                shard = None
        except BaseException:
            if pool is not None:
                pool.terminate()
            if shard is not None:  # keep what is complete: the files in the open shard are all whole
                shard.close()
            meter.close()
            raise
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    meter.close()
    seconds = time.perf_counter() - start
    manifest = write_manifest(out, scans, settings)
    manifest["throughput"] = {"seconds": round(seconds, 3), "frames": meter.n,
                              "frames_per_second": round(meter.n / seconds, 2) if seconds > 0 else None}
    return manifest


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m usjepa_jax.data.prepare", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", action="append", required=True, help="a dataset folder or file (repeatable)")
    p.add_argument("--output", required=True)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoder processes (0: in-process)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--shard-size", type=int, default=1024, help="frames per shard (a file is never split)")
    p.add_argument("--on-error", choices=ON_ERROR, default="skip")
    p.add_argument("--nifti-axis", type=int, default=-1, help="NIfTI: slice along this axis")
    p.add_argument("--video-stride", type=int, default=1, help="cine video: every k-th frame")
    p.add_argument("--h5-key", default="", help="HDF5: the dataset holding the frames (default: the only "
                   "image-like one)")
    p.add_argument("--include-test", action="store_true", help="also UltraBench test.json files")
    p.add_argument("--options", default=WRITER_OPTIONS, help="ArrayRecord writer options, e.g. group_size:1,zstd:3")
    for step in ("grayscale", "inpaint", "detect_scan_region", "crop_to_scan_region"):
        p.add_argument(f"--no-{step.replace('_', '-')}", dest=step, action="store_false")
    p.add_argument("--no-rescale", dest="rescale", action="store_false", help="no 2-98 percentile rescaling")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    a = p.parse_args(argv)
    prep = pp.PreprocessConfig(grayscale=a.grayscale, inpaint=a.inpaint, detect_scan_region=a.detect_scan_region,
                               crop_to_scan_region=a.crop_to_scan_region,
                               rescale_percentiles=pp.PreprocessConfig.rescale_percentiles if a.rescale else None)
    try:
        m = prepare(a.input, a.output, workers=a.workers, size=a.size, shard_size=a.shard_size,
                    on_error=a.on_error, preprocess=prep, include_test=a.include_test, options=a.options,
                    frame_options=FrameOptions(a.nifti_axis, a.video_stride, a.h5_key), progress=not a.quiet)
    except KeyboardInterrupt:
        print("\ninterrupted: finished shards are kept; rerun the same command to continue.", file=sys.stderr)
        return 130
    except NoFramesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name, d in m["datasets"].items():
        print(f"{name}: {d['files']} files, {d['frames']} frames, {len(d['skipped'])} skipped", file=sys.stderr)
        for s in d["skipped"]:
            print(f"  skipped {s['file']}: {s['reason']}", file=sys.stderr)
        if d["unread"]:
            print(f"  not read (not a frame format): {describe_extensions(d['unread'])}", file=sys.stderr)
    t = m["throughput"]
    print(f"wrote {a.output}: {m['total']['frames']} frames in {len(m['shards'])} shards; this run {t['frames']} "
          f"frames in {t['seconds']:.1f} s ({t['frames_per_second']} frames/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
