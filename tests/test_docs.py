"""The README and the pages under docs/ link to files that exist."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def relative_links(page: Path) -> list[str]:
    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    return [t.split("#")[0] for t in targets if not re.match(r"[a-z]+://|#", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_points_to_a_file(page):
    missing = [link for link in relative_links(page) if not (page.parent / link).exists()]
    assert missing == []


def test_the_readme_links_every_docs_page():
    linked = {(ROOT / link).resolve() for link in relative_links(ROOT / "README.md")}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


def test_ci_runs_the_readmes_install_test_and_lint_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Install and test") : readme.index("### Try the bundled model")]
    commands = [line for block in re.findall(r"```bash\n(.*?)```", section, re.S) for line in block.splitlines()]
    ci_lines = {line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()}
    steps = [step for command in commands for step in command.split(" && ")]
    assert len(steps) == 5
    assert [step for step in steps if step not in ci_lines] == []
