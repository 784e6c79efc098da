"""The README stays scannable and every document points only inside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s#]+)(#[^)\s]*)?\)")


def test_the_readme_is_short_and_fits_the_screen():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 350
    long = [i + 1 for i, line in enumerate(lines) if len(line) > 120]
    assert not long, f"README lines over 120 characters: {long}"
    # CI runs the README's install and test commands from its Quickstart block.
    text = "\n".join(lines)
    assert 'pip install -c constraints.txt -e ".[dev]"' in text and "python -m pytest -q" in text


def test_documents_link_only_to_files_in_the_repository():
    for doc in DOCS:
        text = doc.read_text()
        assert "PAPERS.md" not in text and "../shared" not in text, doc.name
        for target, _ in LINK.findall(text):
            if re.match(r"[a-z]+://", target) or target.startswith("mailto:"):
                continue
            path = (doc.parent / target).resolve()
            assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
            assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_no_code_cites_a_file_outside_the_repository():
    cited = [f"{p.relative_to(ROOT)}" for folder in ("edgekd", "deploy", "calibration")
             for p in (ROOT / folder).rglob("*.py") if "PAPERS.md" in p.read_text()]
    assert not cited, f"cite docs/methods.md instead: {cited}"
