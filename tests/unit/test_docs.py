"""The documentation stays true: its Python examples compile, its links resolve, the README's two
commands are the ones CI and the scripts run, and nothing in the repository points outside it."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")
PYTHON_INFO = ("python", "py", "python3", "pycon")
OUTSIDE = ".." + "/shared"  # spelled in two parts so that this file does not match itself


def repository_files() -> list[Path] | None:
    """Files git tracks, plus new ones it does not ignore (what the next commit can hold); None
    outside a git checkout."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        return None
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, capture_output=True, check=True).stdout
    names = sorted({name for name in out.decode("utf-8", "surrogateescape").split("\0") if name})
    return [ROOT / name for name in names if (ROOT / name).is_file()]


def doc_files() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def markdown_files() -> list[Path]:
    """Every Markdown file of the repository (README.md, docs/, and those beside the code)."""
    found = {p for p in repository_files() or [] if p.suffix.lower() == ".md"} | set(doc_files())
    return sorted(p for p in found if p.is_file())


def code_blocks(path: Path):
    """(info string, first line number of the code, code) of every fenced block in a Markdown file."""
    return fenced_blocks(path.read_text(encoding="utf-8"))


def fenced_blocks(text: str):
    """(info string, first line number of the code, code) of every fenced block in Markdown text."""
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, info = match.groups()
        start, body = i + 1, []
        i += 1
        while i < len(lines) and not (lines[i].strip().startswith(fence[0] * len(fence))
                                      and not lines[i].strip().strip(fence[0])):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1
        yield info.lower(), start + 1, "\n".join(body) + "\n"


def prose(path: Path, keep_code_spans: bool = False) -> str:
    """The Markdown text outside fenced blocks (and inline code spans, unless kept)."""
    kept, inside = [], None
    for line in path.read_text(encoding="utf-8").splitlines():
        match = FENCE.match(line)
        if inside is None and match:
            inside = match.group(2)[0] * len(match.group(2))
            kept.append("")
            continue
        if inside is not None:
            if line.strip().startswith(inside) and not line.strip().strip(inside[0]):
                inside = None
            kept.append("")
            continue
        kept.append(line if keep_code_spans else re.sub(r"(`+)(?:(?!\1).)+?\1", "", line))
    return "\n".join(kept)


def session_to_source(code: str) -> str:
    """An interactive session (``>>>`` prompts) as the source it runs; output lines are dropped."""
    if not any(line.startswith(">>>") for line in code.splitlines()):
        return code
    source = []
    for line in code.splitlines():
        if line.startswith((">>> ", "... ")):
            source.append(line[4:])
        elif line.rstrip() in (">>>", "..."):
            source.append("")
    return "\n".join(source) + "\n"


def python_blocks():
    for path in doc_files():
        for info, line, code in code_blocks(path):
            if info in PYTHON_INFO:
                yield pytest.param(path, line, code, id=f"{path.relative_to(ROOT)}:{line}")


@pytest.mark.parametrize("path, line, code", list(python_blocks()))
def test_python_block_compiles(path, line, code):
    compile(session_to_source(code), f"{path.relative_to(ROOT)}:{line}", "exec")


def test_the_docs_have_python_examples():
    assert list(python_blocks()), "no ```python block found in README.md or docs/"


# ------------------------------------------------------------------ the README's two commands
def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    match = re.search(r"^## Two commands\s*$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, "README.md has no '## Two commands' section"
    commands = []
    for _, _, code in fenced_blocks(match.group(1)):
        for line in code.splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                commands.append(line)
    return commands


def non_comment_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
            if line.strip() and not line.strip().startswith("#")]


def test_readme_names_the_two_commands():
    assert readme_commands() == ["bash scripts/demo.sh", "bash scripts/test.sh"]


def test_ci_runs_the_readme_test_command():
    test_command = next(c for c in readme_commands() if "test" in c)
    wanted = shlex.split(test_command)
    calls = [shlex.split(line) for line in non_comment_lines(ROOT / ".ci" / "run")]
    assert any(words[:len(wanted)] == wanted for words in calls), \
        f".ci/run does not call {test_command!r}"


def test_the_demo_command_runs_werkbund_demo():
    demo_command = next(c for c in readme_commands() if "demo" in c)
    script = ROOT / shlex.split(demo_command)[-1]
    assert script.is_file(), f"{script.relative_to(ROOT)} does not exist"
    assert any(re.search(r"(^|[\s/])werkbund demo\b", line) for line in non_comment_lines(script)), \
        f"{script.relative_to(ROOT)} does not run `werkbund demo`"


# ------------------------------------------------------------------ nothing points outside
def test_no_file_refers_outside_the_repository():
    files = repository_files()
    if files is None:
        pytest.skip("not a git checkout")
    offenders = []
    for path in files:
        data = path.read_bytes()
        if b"\0" in data[:8192]:  # binary
            continue
        for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
            if OUTSIDE in line:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert offenders == [], "files refer to a folder outside the repository:\n" + "\n".join(offenders)


# ------------------------------------------------------------------ links
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+\"[^\"]*\")?\s*$", re.M)


def relative_links(path: Path) -> list[str]:
    text = prose(path)
    targets = LINK.findall(text) + REFERENCE.findall(text)
    return [t for t in targets if not re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", t)]


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown file."""
    seen: dict[str, int] = {}
    result = set()
    for heading in headings(path):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        result.add(slug if count == 0 else f"{slug}-{count}")
    return result


def headings(path: Path) -> list[str]:
    """The text of every heading outside fenced blocks, without backticks."""
    found = []
    for line in prose(path, keep_code_spans=True).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            found.append(heading.group(1).replace("`", ""))
    return found


def link_params():
    for path in markdown_files():
        for target in sorted(set(relative_links(path))):
            yield pytest.param(path, target, id=f"{path.relative_to(ROOT)}->{target}")


@pytest.mark.parametrize("path, target", list(link_params()))
def test_relative_link_points_to_an_existing_file(path, target):
    file_part, _, anchor = target.partition("#")
    resolved = (path.parent / file_part).resolve() if file_part else path
    assert resolved.exists(), f"{path.relative_to(ROOT)} links to {file_part}, which does not exist"
    assert resolved == ROOT or ROOT in resolved.parents, f"{path.relative_to(ROOT)} links outside the repository"
    if anchor and resolved.is_file() and resolved.suffix.lower() == ".md":
        assert anchor.lower() in anchors(resolved), \
            f"{path.relative_to(ROOT)} links to #{anchor}, a heading {file_part or path.name} does not have"


CLAIM_PAGES = ("docs/security.md", "algorithms/privacy/README.md")


@pytest.mark.parametrize("page", CLAIM_PAGES)
def test_every_test_a_claim_names_exists(page):
    """The security page and the privacy README state only what tests show, each claim beside the test
    that shows it: a test named there that is renamed or removed fails here by name."""
    defined: dict[str, set[str]] = {}
    for path in (ROOT / "tests").rglob("test_*.py"):
        defined[path.name] = set(re.findall(r"^\s*def (test_\w+)", path.read_text(), re.M))
    everywhere = set().union(*defined.values())
    text = (ROOT / page).read_text()
    named = re.findall(r"(?:(test_\w+\.py)::)?\b(test_\w+)\b(?!\.py)", text)
    assert len(named) >= 10
    missing = [f"{file}::{name}" if file else name for file, name in named
               if name not in (defined.get(file, set()) if file else everywhere)]
    assert missing == []
