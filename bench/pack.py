"""Packing speed of ``otakit pack`` against Info-ZIP ``zip -r -6`` on the same folder.

The folder (1 GiB by default) holds many small files (20,000 by default, 1-32 KiB each, half compressible
text made of words, half random bytes, 100 to a folder) and three large random (incompressible) files
making up the rest of the size (about two thirds of it). Subject: the console script
``otakit pack DIR --package bench --branch b --version 1.0 --out OUT`` (a subprocess). Baseline:
``zip -r -q -6 OUT.zip .`` run in the folder (Debian's Info-ZIP zip). Both write their output in a
folder next to the source (same disk), deleted before each run; the two alternate round by round. Before
every run dirty pages are written back (``sync``) and the source files are pre-read (``--cache warm``,
the default) or dropped from the page cache (``--cache cold``).

otakit pack fsyncs its zip and zip does not: the fsync of zip's output is timed separately, after it
returns, and a second ratio against zip + fsync is printed for that reason. The goal is on the first
ratio, otakit/zip (goal <= 1.2). Every pack of the same folder must give the same sha256: that is
checked over all the runs (warm-up included) and printed.

    .venv/bin/python bench/pack.py [--size-mb 1024] [--small-files 20000] [--rounds 3] [--cache warm|cold]
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    MiB,
    bench_parser,
    drop_cache,
    fsync_file,
    median,
    print_table,
    rusage_cpu_s,
    temp_dir,
    verdict,
    warm_cache,
)

KiB = 1024
LARGE_FILES = 3
PER_FOLDER = 100
WORDS = 4000  # the vocabulary of the text files: compresses about 2.5-3x with deflate


def otakit_script() -> str:
    """The ``otakit`` console script of the venv this runs in."""
    here = Path(sys.executable).parent / "otakit"
    found = str(here) if here.exists() else shutil.which("otakit")
    if not found:
        raise SystemExit("the otakit console script is not installed (pip install -e .)")
    return found


def make_corpus(rng: random.Random, size: int) -> bytes:
    """Lines of words from a fixed vocabulary: text that deflates like source code or config files."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocabulary = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(WORDS)]
    out: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choices(vocabulary, k=rng.randint(3, 14))) + "\n"
        out.append(line)
        length += len(line)
    return "".join(out).encode()


def make_folder(root: Path, size: int, small_files: int, seed: int = 1) -> tuple[int, int, int]:
    """Fill ``root``; return (files, bytes in small files, bytes in large files)."""
    rng = random.Random(seed)
    corpus = make_corpus(rng, 4 * MiB)
    # Keep the small files to at most a third of the total, so that a small --size-mb still has its
    # large files.
    small_files = max(0, min(small_files, (size // 3) // (16 * KiB)))
    small_total = 0
    for n in range(small_files):
        folder = root / f"tree{n // (PER_FOLDER * 20):02d}" / f"dir{n // PER_FOLDER:03d}"
        if n % PER_FOLDER == 0:
            folder.mkdir(parents=True, exist_ok=True)
        length = rng.randint(1 * KiB, 32 * KiB)
        if n % 2 == 0:
            start = rng.randrange(0, len(corpus) - length)
            (folder / f"file{n:05d}.txt").write_bytes(corpus[start : start + length])
        else:
            (folder / f"file{n:05d}.bin").write_bytes(os.urandom(length))
        small_total += length
    large_total = max(0, size - small_total)
    big = root / "large"
    big.mkdir()
    block = 4 * MiB
    for n in range(LARGE_FILES):
        left = large_total // LARGE_FILES + (large_total % LARGE_FILES if n == 0 else 0)
        with open(big / f"blob{n}.bin", "wb", buffering=0) as out:
            while left:
                data = os.urandom(min(block, left))
                out.write(data)
                left -= len(data)
    os.sync()
    return small_files + LARGE_FILES, small_total, large_total


def all_files(root: Path) -> list[Path]:
    return [Path(folder) / name for folder, _, names in os.walk(root) for name in names]


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(4 * MiB)
        view = memoryview(buf)
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def run_otakit(otakit: str, folder: Path, out: Path) -> tuple[float, float, str]:
    """(seconds, CPU seconds, sha256 from content.json) of one ``otakit pack``."""
    shutil.rmtree(out, ignore_errors=True)
    cpu = rusage_cpu_s(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [otakit, "pack", str(folder), "--package", "bench", "--branch", "b", "--version", "1.0",
         "--out", str(out)],
        capture_output=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"otakit pack failed: {done.stdout!r} {done.stderr!r}")
    sha = json.loads((out / "content.json").read_text())["sha256"]
    return elapsed, rusage_cpu_s(resource.RUSAGE_CHILDREN) - cpu, sha


def run_zip(folder: Path, out: Path) -> tuple[float, float, float]:
    """(seconds, CPU seconds, seconds of the fsync after it) of one ``zip -r -q -6``."""
    out.unlink(missing_ok=True)
    cpu = rusage_cpu_s(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(["zip", "-r", "-q", "-6", str(out), "."], cwd=folder, capture_output=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"zip failed: {done.stdout!r} {done.stderr!r}")
    cpu = rusage_cpu_s(resource.RUSAGE_CHILDREN) - cpu
    start = time.perf_counter()
    fsync_file(out)
    return elapsed, cpu, time.perf_counter() - start


def main() -> None:
    parser = bench_parser(__doc__, size_mb=1024, rounds=3, what="folder", cache="warm")
    parser.add_argument(
        "--small-files", type=int, default=20000, help="small files, 1-32 KiB each (default 20000)"
    )
    args = parser.parse_args()
    if not shutil.which("zip"):
        raise SystemExit("needs Info-ZIP zip: apt-get install -y zip")
    otakit = otakit_script()

    with temp_dir("otakit-bench-pack-") as work:
        src = work / "src"
        src.mkdir()
        print(f"writing a folder of {args.size_mb} MiB to {src} ...", flush=True)
        files, small_bytes, large_bytes = make_folder(src, args.size_mb * MiB, args.small_files)
        print(
            f"  {files} files: {files - LARGE_FILES} small ({small_bytes / MiB:.0f} MiB, half text, half "
            f"random), {LARGE_FILES} large random ({large_bytes / MiB:.0f} MiB)",
            flush=True,
        )
        sources = all_files(src)
        otakit_out = work / "otakit-out"
        zip_out = work / "zip-out" / "OUT.zip"
        zip_out.parent.mkdir()

        def prepare() -> None:
            os.sync()  # no dirty pages from the previous run
            for path in sources:
                (drop_cache if args.cache == "cold" else warm_cache)(path)
            time.sleep(0.5)

        digests: list[str] = []
        for _ in range(args.warmup):
            prepare()
            digests.append(run_otakit(otakit, src, otakit_out)[2])
            prepare()
            run_zip(src, zip_out)
        rows = []
        for n in range(args.rounds):
            order = ["baseline", "subject"] if n % 2 == 0 else ["subject", "baseline"]
            for side in order:
                prepare()
                if side == "baseline":
                    zip_s, zip_cpu, fsync_s = run_zip(src, zip_out)
                else:
                    otakit_s, otakit_cpu, sha = run_otakit(otakit, src, otakit_out)
                    digests.append(sha)
            rows.append(
                [n + 1, "/".join(order), zip_s, fsync_s, otakit_s, otakit_s / zip_s,
                 otakit_s / (zip_s + fsync_s), zip_cpu, otakit_cpu]
            )  # fmt: skip
            print(
                f"  round {n + 1}: zip {zip_s:.2f} s (+ fsync {fsync_s:.2f} s), otakit pack {otakit_s:.2f} s",
                flush=True,
            )
        zip_file = otakit_out / "bench-b-1.0.zip"
        actual = sha256_of(zip_file)
        otakit_size = zip_file.stat().st_size
        zip_size = zip_out.stat().st_size

    print()
    print(f"pack of {args.size_mb} MiB ({files} files), page cache: {args.cache}, {args.rounds} rounds")
    print_table(
        ["round", "order", "zip s", "its fsync s", "otakit s", "otakit/zip", "otakit/(zip+fsync)",
         "zip CPU s", "otakit CPU s"],
        rows,
    )  # fmt: skip
    ratio = median([r[5] for r in rows])
    print()
    print(f"median zip:         {median([r[2] for r in rows]):.2f} s ({zip_size / 1e6:.0f} MB out)")
    print(f"median otakit pack: {median([r[4] for r in rows]):.2f} s ({otakit_size / 1e6:.0f} MB out)")
    print(f"ratio otakit/zip (median of rounds): {ratio:.2f}  {verdict(ratio, 1.2, higher_is_better=False)}")
    print(f"ratio otakit/(zip + fsync of its output): {median([r[6] for r in rows]):.2f}")
    print(
        f"CPU seconds (median): zip {median([r[7] for r in rows]):.2f}, "
        f"otakit {median([r[8] for r in rows]):.2f}"
    )
    same = len(set(digests)) == 1 and digests[0] == actual
    print(
        f"reproducible: {len(digests)} packs of the same folder, sha256 "
        f"{'all equal' if same else 'DIFFER'}: {', '.join(sorted(set(digests)))}"
        + ("" if digests[0] == actual else f" (file on disk: {actual})")
    )


if __name__ == "__main__":
    main()
