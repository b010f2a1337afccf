"""Speed, latency and memory of `semcal filter` (issue 10) with a saved filter on AudioCaps captions.

Each measurement runs `python -m semcal filter ...` as a subprocess, as a user would:
  1. throughput on --n_texts captions (a seeded sample), texts/s: batch mode (a CSV file in,
     a CSV file out) against streaming mode (JSON lines on standard input, stream=true, the
     default batch size, JSON lines on standard output). Wall time includes start-up (imports,
     loading the filter); the steady rate comes from the command's own "... in X s" summary
     line, which times reading, scoring and writing. Best of --runs runs (medians shown too).
  2. streaming latency per decision, p50 / p95, at micro-batch sizes 1, 8, 32: a writer thread
     feeds JSON lines at a steady --pace (lines/s) through a pipe, stamping each line as it is
     written; the reader stamps each decision line as it comes back, matched on its line
     number. Percentiles over --latency_lines lines after --warmup lines. At batch size B a
     decision waits for its batch to fill, so latency includes up to (B-1)/pace of waiting.
  3. memory over an endless stream of --stream_lines lines (captions repeated): the filter
     process's VmRSS from /proc/<pid>/status when 1k, 10k and all lines have been answered,
     before standard input closes, and its VmHWM (peak RSS) at the end. It must stay flat.

  4. --scale (issue 27): on --n_texts AudioCaps captions repeated (200,000 by default), in one run and
     on the same input, the plain pandas + scikit-learn pipeline (bench/plain_sklearn_filter.py)
     against `semcal filter` with its defaults, without explanations (--top_tokens=0), with
     --engine=ray and 1 and 2 workers (the same captions as 4 Parquet parts, a local Ray cluster),
     and --adapt=prior against --adapt=none (a filter fitted with labels; the first --adapt_texts
     captions). Wall time includes start-up; peak memory is the process's maximum RSS (for Ray,
     the driver's alone). The filters come from `semcal fit` (trusted: two AudioCaps categories,
     --pass_rate=0.3), fitted into --work once.

    PYTHONPATH=$PWD .venv/bin/python bench/bench_filter.py
    PYTHONPATH=$PWD .venv/bin/python bench/bench_filter.py --runs=1 --stream_lines=20000   # quick
    PYTHONPATH=$PWD .venv/bin/python bench/bench_filter.py --scale --n_texts=200000 --runs=3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = ROOT.parent / "shared" / "data" / "audiocaps_labeled" / "audiocaps_labeled.csv"
# Written by `bench/bench_quality.py --root=runs/quality --datasets=audiocaps --seeds=0`.
DEFAULT_FILTER = ROOT / "runs" / "quality" / "audiocaps-seed0" / "evaluation" / "mild" / "filter"
SUMMARY = re.compile(r"filter \S+: (\d+) items.* in ([0-9.]+)s")


def filter_command(filter_dir: Path, *settings: str) -> list[str]:
    return [sys.executable, "-m", "semcal", "filter", f"--filter={filter_dir}", *settings]


def environment() -> dict[str, str]:
    """The child imports this checkout's semcal, whatever the caller's directory."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return env


def run_timed(command: list[str], stdin_path: Path | None, stdout_path: Path) -> tuple[float, int, float]:
    """Wall seconds of one run, and the items and seconds of its summary line."""
    with open(stdout_path, "w") as out, open(stdin_path or os.devnull) as source:
        started = time.perf_counter()
        done = subprocess.run(command, stdin=source, stdout=out, stderr=subprocess.PIPE, text=True, env=environment())
        wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    # log lines go to standard output when it is not the records' output, else to standard error
    match = SUMMARY.search(done.stderr) or SUMMARY.search(stdout_path.read_text()[-2000:])
    if match is None:
        raise SystemExit(f"no summary line in the output of {' '.join(command)}:\n{done.stderr}")
    return wall, int(match.group(1)), float(match.group(2))


def throughput(filter_dir: Path, work: Path, runs: int) -> list[dict]:
    modes = {
        "batch (CSV file -> CSV file)": (
            filter_command(
                filter_dir,
                f"--input={work / 'captions.csv'}",
                "--text_column=caption",
                f"--output={work / 'decisions.csv'}",
            ),
            None,
            work / "batch.log",
        ),
        "streaming (JSONL stdin -> stdout, batch 32)": (
            filter_command(filter_dir, "--input=-", "--stream=true", "--output=-"),
            work / "captions.jsonl",
            work / "decisions.jsonl",
        ),
    }
    timings: dict[str, list[tuple[float, int, float]]] = {name: [] for name in modes}
    for _ in range(runs):  # modes take turns, so both meet the same load on a shared machine
        for name, (command, stdin_path, stdout_path) in modes.items():
            timings[name].append(run_timed(command, stdin_path, stdout_path))
    rows = []
    for name, results in timings.items():
        walls = [wall for wall, _, _ in results]
        rates = [items / seconds for _, items, seconds in results]
        rows.append(
            {
                "mode": name,
                "items": results[0][1],
                "wall_best": min(walls),
                "wall_median": statistics.median(walls),
                "startup": statistics.median(wall - seconds for wall, _, seconds in results),
                "rate_wall": results[0][1] / min(walls),
                "rate_steady": max(rates),
                "rate_steady_median": statistics.median(rates),
            }
        )
    return rows, modes


def start_stream(filter_dir: Path, batch_size: int, log_path: Path) -> tuple[subprocess.Popen, threading.Event]:
    """The streaming filter, and an event set once it has loaded the filter (its log goes to log_path)."""
    command = filter_command(filter_dir, "--input=-", "--stream=true", "--output=-", f"--batch_size={batch_size}")
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment()
    )
    loaded = threading.Event()

    def copy_log() -> None:
        with open(log_path, "w") as log:
            for line in process.stderr:
                log.write(line)
                if line.startswith("loaded filter"):
                    loaded.set()
        loaded.set()  # it ended (perhaps failing): stop waiting

    threading.Thread(target=copy_log, daemon=True).start()
    return process, loaded


def json_lines(captions: list[str], count: int):
    for number in range(count):
        yield json.dumps({"text": captions[number % len(captions)]}) + "\n"


def latency(
    filter_dir: Path, work: Path, captions: list[str], batch_size: int, pace: float, warmup: int, measured: int
) -> dict:
    """Per-decision latency at a steady pace; line numbers (from 1) match decisions to lines."""
    total = warmup + measured
    process, loaded = start_stream(filter_dir, batch_size, work / f"latency_{batch_size}.log")
    written = np.zeros(total + 1)
    answered = np.zeros(total + 1)
    loaded.wait()  # start-up is not latency: feed lines once the filter is loaded

    def write() -> None:
        start = time.perf_counter()
        for number, line in enumerate(json_lines(captions, total), 1):
            delay = start + (number - 1) / pace - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            written[number] = time.perf_counter()
            process.stdin.write(line)
            process.stdin.flush()
        process.stdin.close()

    writer = threading.Thread(target=write)
    writer.start()
    for line in process.stdout:
        answered[json.loads(line)["line"]] = time.perf_counter()
    writer.join()
    process.wait()
    seconds = 1000 * (answered[warmup + 1 :] - written[warmup + 1 :])
    if process.returncode != 0 or not np.all(answered[1:] > 0):
        raise SystemExit(f"streaming at batch size {batch_size} lost lines; see {work}/latency_{batch_size}.log")
    return {
        "batch_size": batch_size,
        "p50": np.percentile(seconds, 50),
        "p95": np.percentile(seconds, 95),
        "max": seconds.max(),
        "lines": measured,
    }


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"/proc/{pid}/status has no {field}")


def memory(filter_dir: Path, work: Path, captions: list[str], total: int) -> dict:
    """RSS of the filter process as an endless stream goes by (standard input stays open)."""
    process, _ = start_stream(filter_dir, 32, work / "memory.log")
    all_answered = threading.Event()

    def write() -> None:
        for line in json_lines(captions, total):
            process.stdin.write(line)
        process.stdin.flush()
        all_answered.wait()  # an endless stream: no end of input before the last sample
        process.stdin.close()

    writer = threading.Thread(target=write)
    writer.start()
    marks = sorted({1_000, 10_000, total})
    samples = {}
    started = time.perf_counter()
    for count, _ in enumerate(process.stdout, 1):
        if count in marks:
            samples[count] = rss_kib(process.pid)
        if count == total:
            peak = rss_kib(process.pid, "VmHWM")
            all_answered.set()
    writer.join()
    process.wait()
    if len(samples) != len(marks):
        raise SystemExit(f"the endless stream stopped early; see {work}/memory.log")
    return {"samples": samples, "peak": peak, "seconds": time.perf_counter() - started}


def report(args, rows, modes, latencies, mem, started: float) -> None:
    print(
        f"\n## semcal filter: {args.filter.parent.name} split, filter {json.loads((args.filter / 'filter.json').read_text())['filter']}"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, load average at start {args.load:.2f}; captions: {args.csv.name}\n"
    )
    print(f"### Throughput, {rows[0]['items']} captions (best of {args.runs} runs; median in brackets)\n")
    print("| mode | wall incl. start-up (s) | start-up (s) | texts/s incl. start-up | steady texts/s |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['mode']} | {row['wall_best']:.2f} ({row['wall_median']:.2f}) | {row['startup']:.2f} | "
            f"{row['rate_wall']:,.0f} | {row['rate_steady']:,.0f} ({row['rate_steady_median']:,.0f}) |"
        )
    print(
        f"\n### Streaming latency per decision, paced at {args.pace:.0f} lines/s "
        f"({args.latency_lines} lines after {args.warmup} warm-up lines)\n"
    )
    print("| batch_size | p50 (ms) | p95 (ms) | max (ms) |")
    print("|---:|---:|---:|---:|")
    for row in latencies:
        print(f"| {row['batch_size']} | {row['p50']:.1f} | {row['p95']:.1f} | {row['max']:.1f} |")
    print(f"\n### Memory over an endless stream of {args.stream_lines:,} lines (batch 32, {mem['seconds']:.0f} s)\n")
    print("| lines answered | " + " | ".join(f"{count:,}" for count in mem["samples"]) + " | peak (VmHWM) |")
    print("|---" * (len(mem["samples"]) + 2) + "|")
    print(
        "| RSS (MiB) | "
        + " | ".join(f"{kib / 1024:.1f}" for kib in mem["samples"].values())
        + f" | {mem['peak'] / 1024:.1f} |"
    )
    print("\nCommands:")
    for name, (command, stdin_path, _) in modes.items():
        source = f" < {stdin_path}" if stdin_path else ""
        print(f"  {name}: {' '.join(command[1:])}{source}")
    print(f"  bench: PYTHONPATH=$PWD {Path(sys.executable).name} bench/bench_filter.py " + " ".join(sys.argv[1:]))
    print(f"\ntotal bench time {time.perf_counter() - started:.0f} s")


# ---- --scale: semcal against plain scikit-learn, Ray, adaptation (issue 27) -------------------------


def run_measured(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one run of `command`, which must succeed."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=environment(), cwd=ROOT
    )
    _, err = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{err[-3000:]}")
    peak = int(re.search(r"PEAK_RSS_KIB=(\d+)", err).group(1)) if "PEAK_RSS_KIB" in err else 0
    return wall, peak / 1024


PEAK = (
    "import atexit, resource, sys; atexit.register(lambda: print('PEAK_RSS_KIB=%d' % "
    "resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)); "
)


def with_peak(command: list[str]) -> list[str]:
    """The command run so that it prints its peak RSS at exit (to standard error)."""
    if command[1:3] == ["-m", "semcal"]:
        code = PEAK + "sys.argv = ['semcal'] + sys.argv[1:]; from semcal.cli.cli import main; raise SystemExit(main())"
        return [command[0], "-c", code, *command[3:]]
    code = PEAK + "import runpy; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
    return [command[0], "-c", code, *command[1:]]


def fit_filter(work: Path, csv: Path, name: str, labels: bool) -> Path:
    folder = work / name
    if (folder / "filter.json").exists():
        return folder
    table = pd.read_csv(csv)
    train = table[table["split"] == "train"]
    trusted = train[train["top_category"].isin(["Animal", "Natural sounds"])]
    for part, rows in (("trusted", trusted), ("general", train)):
        rows[["caption", "top_category"]].rename(columns={"caption": "text"}).to_csv(work / f"{part}.csv", index=False)
    command = [
        sys.executable,
        "-m",
        "semcal",
        "fit",
        f"--real={work / 'trusted.csv'}",
        f"--general={work / 'general.csv'}",
    ]
    command += [f"--output={folder}", "--pass_rate=0.3", *(["--label_column=top_category"] if labels else [])]
    subprocess.run(command, check=True, env=environment(), cwd=ROOT, stdout=subprocess.DEVNULL)
    return folder


def scale(args) -> None:
    work = args.work / "scale"
    work.mkdir(parents=True, exist_ok=True)
    tfidf, joint = fit_filter(work, args.csv, "filter_tfidf", False), fit_filter(work, args.csv, "filter_joint", True)
    captions = pd.read_csv(args.csv, usecols=["caption"])["caption"].dropna().tolist()
    repeated = (captions * (args.n_texts // len(captions) + 1))[: args.n_texts]
    stream = pd.DataFrame({"uid": [f"item-{i}" for i in range(len(repeated))], "caption": repeated})
    stream.to_csv(work / "stream.csv", index=False)
    stream.head(args.adapt_texts).to_csv(work / "stream_adapt.csv", index=False)
    parts = work / "parts"
    parts.mkdir(exist_ok=True)
    for k in range(4):
        stream.iloc[k * len(stream) // 4 : (k + 1) * len(stream) // 4].to_parquet(parts / f"part-{k}.parquet")
    common = ["--text_column=caption", "--id_column=uid"]

    def semcal(folder: Path, source: Path, output: str, *settings: str) -> list[str]:
        return filter_command(folder, f"--input={source}", f"--output={work / output}", *common, *settings)

    variants = {
        "plain pandas + scikit-learn": [
            sys.executable,
            str(ROOT / "bench" / "plain_sklearn_filter.py"),
            str(tfidf),
            str(work / "stream.csv"),
            "caption",
            str(work / "plain.csv"),
        ],
        "semcal filter (defaults)": semcal(tfidf, work / "stream.csv", "default.csv"),
        "semcal filter --top_tokens=0": semcal(tfidf, work / "stream.csv", "no_tokens.csv", "--top_tokens=0"),
        "semcal filter --engine=ray --workers=1": semcal(tfidf, parts, "ray1", "--engine=ray", "--workers=1"),
        "semcal filter --engine=ray --workers=2": semcal(tfidf, parts, "ray2", "--engine=ray", "--workers=2"),
        f"joint filter, --adapt=none ({args.adapt_texts:,} texts)": semcal(
            joint, work / "stream_adapt.csv", "none.csv"
        ),
        f"joint filter, --adapt=prior ({args.adapt_texts:,} texts)": semcal(
            joint, work / "stream_adapt.csv", "prior.csv", "--adapt=prior"
        ),
    }
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in variants}
    for _ in range(args.runs):  # variants take turns, so all meet the same load
        for name, command in variants.items():
            results[name].append(run_measured(with_peak(command)))
    plain = statistics.median(wall for wall, _ in results["plain pandas + scikit-learn"])
    print(f"\n### Throughput at scale, {args.n_texts:,} captions (median of {args.runs} runs; best in brackets)\n")
    print(f"load average at start {args.load:.2f}; {os.cpu_count()} cores\n")
    print("| variant | wall incl. start-up (s) | texts/s | wall / plain | peak RSS (MiB) |")
    print("|---|---:|---:|---:|---:|")
    for name, runs in results.items():
        walls = [wall for wall, _ in runs]
        texts = args.adapt_texts if "adapt" in name else args.n_texts
        median = statistics.median(walls)
        print(
            f"| {name} | {median:.2f} ({min(walls):.2f}) | {texts / median:,.0f} | "
            f"{median / plain if 'adapt' not in name else float('nan'):.2f} | {max(peak for _, peak in runs):,.0f} |"
        )
    print("\nCommands:")
    for name, command in variants.items():
        print(f"  {name}: {' '.join(command[1:])}")
    check = pd.read_csv(work / "plain.csv")["accept_prob"].to_numpy()
    semcal_accept = pd.read_csv(work / "default.csv")["accept_prob"].to_numpy()
    print(f"\nplain and semcal acceptances agree to {np.abs(check - semcal_accept).max():.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filter", type=Path, default=DEFAULT_FILTER)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "bench_filter")
    parser.add_argument("--n_texts", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--pace", type=float, default=200.0, help="lines/s fed in the latency runs")
    parser.add_argument(
        "--warmup", type=int, default=256, help="lines before measuring (first batches pay lazy set-up)"
    )
    parser.add_argument("--latency_lines", type=int, default=512)
    parser.add_argument("--stream_lines", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", action="store_true", help="semcal against plain scikit-learn, Ray, adapt (issue 27)")
    parser.add_argument("--adapt_texts", type=int, default=20_000, help="--scale: captions of the adapt runs")
    args = parser.parse_args()
    started = time.perf_counter()
    args.load = os.getloadavg()[0]
    if args.scale:
        args.n_texts = args.n_texts if "--n_texts" in " ".join(sys.argv) else 200_000
        scale(args)
        return
    args.work.mkdir(parents=True, exist_ok=True)
    captions = pd.read_csv(args.csv, usecols=["caption"])["caption"].dropna()
    captions = captions.sample(args.n_texts, random_state=args.seed).tolist()
    pd.DataFrame({"caption": captions}).to_csv(args.work / "captions.csv", index=False)
    (args.work / "captions.jsonl").write_text("".join(json_lines(captions, len(captions))))
    rows, modes = throughput(args.filter, args.work, args.runs)
    latencies = [
        latency(args.filter, args.work, captions, size, args.pace, args.warmup, args.latency_lines)
        for size in (1, 8, 32)
    ]
    mem = memory(args.filter, args.work, captions, args.stream_lines)
    report(args, rows, modes, latencies, mem, started)


if __name__ == "__main__":
    main()
