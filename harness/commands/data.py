"""`lofi data ...`: dataset utilities. Each subcommand has a ``_register_<name>`` helper and a ``_<name>`` handler."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from harness.commands._options import add_config_options
from harness.data.annotations import LAYOUTS, read_annotations
from harness.data.model import SUBSETS, TALDataset
from harness.errors import LofiError

STATS_EXAMPLE = """\
examples:
  lofi data stats --annotations data/smoke/annotations.json
  lofi data stats --annotations activity_net_v1-3_gt.json
  lofi data stats --annotations anet_anno_action.json --video-info video_info_new.csv --json
  lofi data stats --annotations val_Annotation.csv --layout thumos14-csv
  lofi data stats --annotations my_annotations.json --strict

Segments that end past their video (215 in the official ActivityNet-1.3 file) are clipped to [0, duration] and
zero-length ones kept, as the official evaluator tolerates them; both are counted and reported. --strict refuses
them instead.

--json prints {"videos": {subset: n}, "instances": n, "classes": n, "repaired": {"clipped": n, "zero_length": n,
"max_overshoot_s": s, "before_start": n, "max_before_start_s": s, "past_end": n, "max_past_end_s": s}}.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "data", help="dataset utilities (stats, ...)", description="Dataset utilities: inspect annotation files."
    )
    data_sub = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    data_sub.required = True
    _register_stats(data_sub)
    _register_synth(data_sub)
    _register_prepare(data_sub)


def _register_stats(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser(
        "stats",
        help="count videos per subset, action instances and classes of an annotation file",
        description="Read an annotation file (official ActivityNet/HACS JSON, BSN anet_anno_action.json, THUMOS14 "
        "CSV or JSON), validate it and print videos per subset, action instances and classes.",
        epilog=STATS_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--annotations", required=True, type=Path, metavar="FILE", help="the annotation file")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="auto",
        help="file layout (default: auto, detected from the suffix and keys)",
    )
    parser.add_argument(
        "--video-info",
        type=Path,
        metavar="CSV",
        help="BSN layout only: video_info_new.csv with the subsets (default: next to FILE)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="refuse segments that lie outside their video or have zero length (default: clip them to "
        "[0, duration], keep zero-length ones, count and report both)",
    )
    parser.add_argument("--clip-segments", action="store_true", help="the default (kept for old scripts)")
    parser.add_argument("--json", action="store_true", help="print the counts as one JSON object")
    parser.set_defaults(func=_stats)


def dataset_stats(dataset: TALDataset) -> dict[str, Any]:
    """``{"videos": {subset: n}, "instances": n, "classes": n}``, subsets in SUBSETS order."""
    counts = dataset.subset_counts()
    videos = {s: counts[s] for s in SUBSETS if s in counts}
    out: dict[str, Any] = {"videos": videos, "instances": dataset.num_instances(), "classes": len(dataset.classes)}
    if "repaired" in dataset.meta:
        out["repaired"] = dict(dataset.meta["repaired"])  # type: ignore[call-overload]
    return out


def _clip_sides(repaired: dict[str, Any]) -> str:
    """Where clipped segments lay: "2 starting before 0 s (by up to 3 s), 1 ending past the end (by up to 0.5 s)"."""
    sides = []
    if repaired.get("before_start"):
        sides.append(
            f"{repaired['before_start']} starting before 0 s (by up to {repaired['max_before_start_s']:.3g} s)"
        )
    if repaired.get("past_end"):
        sides.append(f"{repaired['past_end']} ending past the end (by up to {repaired['max_past_end_s']:.3g} s)")
    return ", ".join(sides) or f"at most {repaired['max_overshoot_s']:.3g} s outside"


def _stats_table(dataset: TALDataset) -> str:
    from tabulate import tabulate

    rows = []
    for subset in SUBSETS:
        videos = dataset.subset(subset)
        if videos:
            known = [v.duration for v in videos if math.isfinite(v.duration)]
            hours = f"{sum(known) / 3600:.1f}" if known else "unknown"
            rows.append([subset, len(videos), sum(len(v.segments) for v in videos), hours])
    rows.append(["total", len(dataset.videos), dataset.num_instances(), ""])
    table = tabulate(rows, headers=["subset", "videos", "instances", "hours"], tablefmt="github")
    text = f"{dataset.source}\n{table}\nclasses: {len(dataset.classes)}"
    repaired = dataset.meta.get("repaired")
    if isinstance(repaired, dict) and (repaired["clipped"] or repaired["zero_length"]):
        text += (
            f"\nclipped to their video: {repaired['clipped']} segment(s) ({_clip_sides(repaired)}); "
            f"zero-length segments kept: {repaired['zero_length']} (--strict refuses both)"
        )
    return text


def _stats(args: argparse.Namespace) -> int:
    dataset = read_annotations(
        args.annotations, layout=args.layout, clip_segments=not args.strict, video_info=args.video_info
    )
    print(json.dumps(dataset_stats(dataset)) if args.json else _stats_table(dataset))
    return 0


SYNTH_EXAMPLE = """\
examples:
  lofi data synth --profile smoke --seed 0 --out data/smoke
  lofi data synth --profile default --seed 0 --out data/default

Writes OUT/annotations.json (ActivityNet layout), OUT/videos/, OUT/clips/ (ACP source), OUT/images/ (ICP
source) and, last, OUT/manifest.json. Re-running resumes an interrupted run; a complete OUT is left as it is.
Design: docs/synthetic.md.
"""


def _register_synth(data_sub: argparse._SubParsersAction) -> None:
    from harness.data.synthetic import PROFILES

    parser = data_sub.add_parser(
        "synth",
        help="generate the built-in synthetic benchmark (videos, annotations, pre-training clips and images)",
        description="Generate the synthetic TAL benchmark: a deterministic function of --profile and --seed.",
        epilog=SYNTH_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--profile", choices=sorted(PROFILES), default="smoke", help="size profile (default: smoke)")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed (default: 0)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder (created; resumable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="render the files in N processes (same bytes for any N; default: 1)",
    )
    parser.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from harness.data.synthetic import generate

    if args.jobs < 1:
        raise LofiError(f"--jobs {args.jobs}: use at least one process")
    print(generate(args.profile, args.seed, args.out, progress=not args.no_progress, workers=args.jobs))
    return 0


PREPARE_EXAMPLE = """\
examples:
  lofi data prepare --config config/activitynet.yaml --workers 16
  lofi data prepare --config config/default.yaml --workers 2

Decodes every video of the config's training, validation and test subsets, and the ACP clips of
data.acp_source, once, in --workers processes, into the frame store data.store names:
  decoded   whole videos as uint8 arrays in data.cache_dir (right for small videos: the synthetic benchmark)
  prepared  each video re-encoded into data.cache_dir/store/ (H.264 at data.max_side, data.store_crf, a keyframe
            every data.store_gop frames, every frame kept); batches then decode only the frames they need
The workflow runs this once before its training jobs, so parallel jobs never decode the same video twice.
Resumable: finished videos are skipped; each one kept is verified against its checksum first and rebuilt (with
a warning) when damaged (docs/contracts.md § Stored artefacts). Prints one line: videos prepared, videos without
a file (data.missing: error stops before any work, naming the file names tried; skip / miss list them in
DATA.cache_dir/lists/) and
undecodable ones (listed there too; they stop the command unless data.skip_corrupt is true). Exits with status 2
when not a single video could be prepared.
"""


def _register_prepare(data_sub: argparse._SubParsersAction) -> None:
    parser = data_sub.add_parser(
        "prepare",
        help="decode a dataset's videos once into its frame store (before parallel training jobs)",
        description="Fill the frame store (data.store: decoded or prepared) of a config's dataset.",
        epilog=PREPARE_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_options(parser)
    parser.add_argument("--workers", type=int, default=1, help="videos decoded in parallel (default 1)")
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.set_defaults(func=_prepare)


def _prepare_one(job: tuple[str, Path, float, Any]) -> tuple[str, int, float, str, int]:
    """(id, bytes in the store, seconds of video, error, damaged entries rebuilt) of one video decoded into the
    store of ``cfg``. An entry already there is verified against its checksum first (rebuilt, with a warning,
    when damaged)."""
    from harness.data.frames import VideoFrames
    from harness.errors import VideoError

    vid, source, duration, cfg = job
    frames = VideoFrames(cfg, cache_bytes=0)  # a worker only fills the store, it never reads a video again
    try:
        if cfg.store == "prepared":
            entry, info = frames.prepare(source)
            return vid, entry.stat().st_size, info.num_frames / info.fps, "", 0
        frames.cache.get(source)
        return vid, frames.cache.entry_path(source).stat().st_size, duration, "", frames.cache.repaired
    except VideoError as exc:
        return vid, 0, 0.0, str(exc), frames.cache.repaired


def _prepare(args: argparse.Namespace) -> int:
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from harness.data.frames import VideoFrames, video_file
    from harness.data.sources import read_source_index
    from harness.errors import ConfigError, LofiError
    from harness.experiment import load_experiment
    from harness.io import write_text_atomic
    from harness.pipeline.data import absent_videos, prepare_dataset, write_missing_list

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    cfg = load_experiment(args.config, args.overrides).data
    ds = prepare_dataset(cfg)  # data.missing decided here: error, or the videos without a file left out
    frames = VideoFrames(cfg, cache_bytes=0)
    subsets = dict.fromkeys((cfg.train_subset, cfg.val_subset, cfg.test_subset))
    absent = absent_videos(ds)
    jobs = [(v.id, video_file(cfg, v), v.duration, cfg) for s in subsets for v in ds.subset(s) if v.id not in absent]
    n_target = len(jobs)
    if cfg.acp_source and (cfg.root / cfg.acp_source).is_file():  # the ACP stage reads these through the store
        jobs += [(it.path.stem, it.path, 0.0, cfg) for it in read_source_index(cfg, cfg.acp_source, "clips")[1]]
    with ProcessPoolExecutor(args.workers) as pool:
        results = list(tqdm(pool.map(_prepare_one, jobs, chunksize=4), total=len(jobs), desc="prepare", unit="video"))
    failed = [(vid, err) for vid, _, _, err, _ in results if err]
    done = [(size, secs) for _, size, secs, err, _ in results if not err]
    repaired = sum(r[4] for r in results)
    prepared_targets = sum(1 for _, _, _, err, _ in results[:n_target] if not err)
    total = sum(size for size, _ in done)
    hours = sum(secs for _, secs in done) / 3600
    timed = sum(size for size, secs in done if secs > 0)  # ACP clips have no annotated duration: not in MB/hour
    lists = cfg.cache_dir / "lists"
    n_missing = write_missing_list(ds, lists / f"{cfg.name}-missing.txt")
    undecodable = lists / f"{cfg.name}-undecodable.txt"
    if failed:
        write_text_atomic(undecodable, "".join(f"{vid}\t{err}\n" for vid, err in failed))
    summary = {
        "store": str(frames.store_dir() if cfg.store == "prepared" else cfg.cache_dir),
        "videos": len(done),
        "failed": len(failed),
        "repaired": repaired,
        "missing": n_missing,
        "missing_policy": cfg.missing,
        "missing_list": str(lists / f"{cfg.name}-missing.txt") if n_missing else None,
        "undecodable_list": str(undecodable) if failed else None,
        "bytes": total,
        "mb_per_video": total / max(1, len(done)) / 1e6,
        "mb_per_hour": timed / 1e6 / hours if hours else 0.0,
    }
    if failed and not cfg.skip_corrupt:
        raise LofiError(
            f"{failed[0][1]} ({len(failed)} videos failed, listed in {undecodable}; set data.skip_corrupt=true "
            "to skip them)"
        )
    if n_target and not prepared_targets:
        raise LofiError(
            f"{cfg.root / cfg.video_dir}: none of the {n_target} videos could be prepared (listed in {undecodable}); "
            "replace the files, then run lofi data prepare again"
        )
    if args.json:
        print(json.dumps(summary))
        return 0
    missing = ""
    if n_missing:
        what = "left out" if cfg.missing == "skip" else "test videos scored as misses, others left out"
        missing = f"{n_missing} without a file (data.missing={cfg.missing}: {what}; list: {summary['missing_list']}), "
    print(
        f"{summary['store']}: prepared {len(done)} videos, {total / 1e9:.2f} GB "
        f"({summary['mb_per_video']:.1f} MB per video, {summary['mb_per_hour']:.0f} MB per hour of video); "
        f"{missing}{len(failed)} undecodable"
        + (f" (skipped; list: {undecodable})" if failed else "")
        + (f"; {repaired} damaged entries found and rebuilt" if repaired else "")
    )
    return 0
