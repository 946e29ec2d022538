"""Benchmarks share docs/benchmarks.md: each rewrites its own sections and keeps the others'."""

from __future__ import annotations

from benchmarks.report import keep_others, replace_section

OLD = "# Benchmarks\n\nintro\n\n## IG\n\nold ig\n\n## GPU\n\nold gpu\n"


def test_replace_section_adds_then_replaces_in_place(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(OLD)
    replace_section(path, "## Installer bundle", "## Installer bundle\n\nsize 1\n")
    assert path.read_text() == OLD + "\n## Installer bundle\n\nsize 1\n"
    replace_section(path, "## IG", "## IG\n\nnew ig\n")
    replace_section(path, "## Installer bundle", "## Installer bundle\n\nsize 2\n")
    assert path.read_text() == ("# Benchmarks\n\nintro\n\n## IG\n\nnew ig\n\n## GPU\n\nold gpu\n"
                                "\n## Installer bundle\n\nsize 2\n")


def test_a_rewritten_report_keeps_sections_it_does_not_own(tmp_path):
    path = tmp_path / "benchmarks.md"
    path.write_text(OLD + "\n## Installer bundle\n\nsize 1\n")
    new = keep_others(path, "# Benchmarks\n\nnew intro\n\n## IG\n\nnew ig\n\n## GPU\n\nnew gpu\n")
    assert new == ("# Benchmarks\n\nnew intro\n\n## IG\n\nnew ig\n\n## GPU\n\nnew gpu\n\n"
                   "## Installer bundle\n\nsize 1\n")
    assert keep_others(tmp_path / "absent.md", "# B\n") == "# B\n"
