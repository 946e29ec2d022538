"""Size and start-up time of the installer bundle, next to the development install.

Needs a built bundle (`make installer`). Every command runs in a fresh process with no network
(`unshare -rn`) and a clean environment (no development venv on PATH), once for the bundle and
once for `.venv/bin/tokentrace`, one after the other. Writes the "Installer bundle" section of
docs/benchmarks.md (the rest of that file is benchmarks/ig_vs_captum.py's).

    python -m benchmarks.bundle --out docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import subprocess
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from benchmarks.report import replace_section

ROOT = Path(__file__).resolve().parent.parent
BUNDLE = ROOT / "dist" / "tokentrace"
VENV = ROOT / ".venv" / "bin" / "tokentrace"
CASE = ROOT / "resources" / "cases" / "demo_case.txt"
SECTION = "## Installer bundle"


def _size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())


def _timed(command: list[str], cache: Path, home: Path) -> float:
    """Seconds of one offline run of ``command`` in a clean environment; fails loudly."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CACHE_HOME": str(cache),
           "QT_QPA_PLATFORM": "offscreen", "LANG": "C.UTF-8"}
    start = time.perf_counter()
    done = subprocess.run(["unshare", "-rn", *command], env=env, capture_output=True,
                          text=True, timeout=1800)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def measure(program: Path, scratch: Path) -> dict[str, float]:
    cache, home = scratch / "cache", scratch / "home"
    home.mkdir(parents=True)
    shot = scratch / "window.png"
    explain = [str(program), "explain", "--case-file", str(CASE), "--max-new-tokens", "8",
               "--no-matrix", "--quiet"]
    return {
        "version": _timed([str(program), "--version"], cache, home),
        "methods": _timed([str(program), "methods"], cache, home),
        # First explain: the GGUF is dequantized into the (empty) cache.
        "explain_cold": _timed(explain, cache, home),
        "explain_warm": _timed(explain, cache, home),
        "window": _timed([str(program), "app", "--screenshot", str(shot)], cache, home),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, help="update this markdown file's bundle section")
    args = parser.parse_args()
    program = BUNDLE / "tokentrace"
    if not program.is_file():
        raise SystemExit("no bundle: run `make installer` first")
    tarballs = sorted((ROOT / "dist").glob("tokentrace-*.tar.gz"))
    results = {}
    for name, executable in (("bundle", program), ("venv", VENV)):
        with tempfile.TemporaryDirectory(prefix="tokentrace-bench-") as scratch:
            results[name] = measure(executable, Path(scratch))
    bundle, venv = results["bundle"], results["venv"]
    largest = sorted(((_size(p) if p.is_dir() else p.stat().st_size, p.name)
                      for p in (BUNDLE / "_internal").iterdir() if not p.is_symlink()),
                     reverse=True)[:5]
    rows = [
        ("`tokentrace --version` (process start)", "version"),
        ("`tokentrace methods` (imports torch and the engine)", "methods"),
        ("window ready to explain (`app --screenshot`, model cached)", "window"),
        ("explain the demo case, first run (dequantizes the GGUF into the cache)",
         "explain_cold"),
        ("explain the demo case again (cached model)", "explain_warm"),
    ]
    lines = [
        SECTION, "",
        f"Run {datetime.now(UTC):%Y-%m-%d} with `python -m benchmarks.bundle` after "
        f"`make installer`; {platform.machine()}, {os.cpu_count()} cores. Each command once, "
        "in a fresh process under `unshare -rn` (no network) with a clean environment; the "
        "bundle and the development venv one after the other. Explain: 8 answer tokens, IG at "
        "4 steps, sequence only.", "",
        "| size | |", "|---|---|",
        f"| dist/tokentrace/ (one folder) | {_size(BUNDLE) / 2**20:,.0f} MiB |",
        *(f"| {t.name} | {t.stat().st_size / 2**20:,.0f} MiB |" for t in tarballs),
        *(f"| of which _internal/{n} | {s / 2**20:,.0f} MiB |" for s, n in largest),
        "",
        "| seconds | bundle | development venv |", "|---|---|---|",
        *(f"| {label} | {bundle[key]:.1f} | {venv[key]:.1f} |" for label, key in rows),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        replace_section(args.out, SECTION, text)


if __name__ == "__main__":
    if shutil.which("unshare") is None:
        raise SystemExit("unshare (util-linux) is needed to run without network")
    main()
