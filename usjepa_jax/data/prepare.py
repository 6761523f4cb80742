"""Decode and preprocess real ultrasound once, into ArrayRecord shards that training reads fast.

    python -m usjepa_jax.data.prepare --input /data/busi_v1 --input /data/echo_dicoms --output /data/prepared \
        [--workers N] [--size 224] [--shard-size 1024] [--on-error skip|raise] [--include-test] \
        [--video-stride K] [--h5-key KEY] [--nifti-axis A]

Inputs may mix formats (image folders, DICOM incl. cine loops, NIfTI, cine video ``.avi/.mp4`` with
``--video-stride``, HDF5 with ``--h5-key``, MetaImage ``.mhd/.raw``, UltraBench dataset folders or a folder of them:
``decoders.py``, ``containers.py``, ``scanning.py``); files of other extensions are counted by extension in the
manifest (``unread``) and the log, and an input without any readable frame fails naming it. Each input folder is
one dataset named after the folder (an UltraBench folder: its own name). Files are decoded and preprocessed
(``preprocess.py``: grayscale, inpainting, scan region, percentile rescaling, crop, resize to ``--size``) in
``--workers`` processes; the main process writes the frames to ``shard-NNNNN.array_record`` files (one record
per frame, ``shards.encode_record``: header + uint8 image + bit-packed scan mask) and, when a shard is complete and
closed, appends its files to ``progress.jsonl``. A file's frames never straddle shards.

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

import dataclasses
import logging
import multiprocessing
import os
import sys
import time
import zlib
from pathlib import Path
from typing import Any

from absl import flags

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


def flag_values() -> flags.FlagValues:
    """The command's flags, in their own ``FlagValues`` (nothing shared with ``main``'s or ``evaluate``'s)."""
    fv = flags.FlagValues()
    flags.DEFINE_multi_string("input", None, "a dataset folder or file (repeatable)", flag_values=fv)
    flags.DEFINE_string("output", None, "the prepared directory", flag_values=fv)
    flags.DEFINE_integer("workers", os.cpu_count() or 1, "decoder processes (0: in-process)", flag_values=fv)
    flags.DEFINE_integer("size", 224, "output size in pixels", flag_values=fv)
    flags.DEFINE_integer("shard-size", 1024, "frames per shard (a file is never split)", flag_values=fv)
    flags.DEFINE_enum("on-error", "skip", ON_ERROR, "an unreadable file: skip it (listed) or raise", flag_values=fv)
    flags.DEFINE_integer("nifti-axis", -1, "NIfTI: slice along this axis", flag_values=fv)
    flags.DEFINE_integer("video-stride", 1, "cine video: every k-th frame", flag_values=fv)
    flags.DEFINE_string("h5-key", "", "HDF5: the dataset holding the frames (default: the only image-like one)",
                        flag_values=fv)
    flags.DEFINE_bool("include-test", False, "also UltraBench test.json files", flag_values=fv)
    flags.DEFINE_string("options", WRITER_OPTIONS, "ArrayRecord writer options, e.g. group_size:1,zstd:3",
                        flag_values=fv)
    for step in ("grayscale", "inpaint", "detect-scan-region", "crop-to-scan-region"):
        flags.DEFINE_bool(f"no-{step}", False, f"skip the preprocessing step {step}", flag_values=fv)
    flags.DEFINE_bool("no-rescale", False, "no 2-98 percentile rescaling", flag_values=fv)
    flags.DEFINE_bool("quiet", False, "no progress bar", flag_values=fv)
    return fv


def main(argv: list[str] | None = None) -> int:
    fv, prog = flag_values(), "python -m usjepa_jax.data.prepare"
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--help" in argv or "-h" in argv:
        print(f"usage: {prog} --input DIR [--input DIR ...] --output DIR [flags]\n\n{__doc__}\n{fv.get_help()}")
        return 0
    try:
        fv([prog, *argv])
        if not fv["input"].value or not fv["output"].value:
            raise flags.Error("--input and --output are required")
    except flags.Error as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    a = {name: fv[name].value for name in fv}
    prep = pp.PreprocessConfig(grayscale=not a["no-grayscale"], inpaint=not a["no-inpaint"],
                               detect_scan_region=not a["no-detect-scan-region"],
                               crop_to_scan_region=not a["no-crop-to-scan-region"],
                               rescale_percentiles=None if a["no-rescale"] else pp.PreprocessConfig.rescale_percentiles)
    try:
        m = prepare(a["input"], a["output"], workers=a["workers"], size=a["size"], shard_size=a["shard-size"],
                    on_error=a["on-error"], preprocess=prep, include_test=a["include-test"], options=a["options"],
                    frame_options=FrameOptions(a["nifti-axis"], a["video-stride"], a["h5-key"]),
                    progress=not a["quiet"])
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
    print(f"wrote {a['output']}: {m['total']['frames']} frames in {len(m['shards'])} shards; this run {t['frames']} "
          f"frames in {t['seconds']:.1f} s ({t['frames_per_second']} frames/s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
