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

    PYTHONPATH=$PWD .venv/bin/python bench/bench_filter.py
    PYTHONPATH=$PWD .venv/bin/python bench/bench_filter.py --runs=1 --stream_lines=20000   # quick
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
    args = parser.parse_args()
    started = time.perf_counter()
    args.load = os.getloadavg()[0]
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
