"""Every document the repository cites is in the repository (issue 11).

`docs/` is the contract; code, comments and docs cite it as ``docs/<file>.md §<n>`` (``<file>.md §<n>``
inside `docs/`, a bare ``§<n>`` for a section of the same file). This test scans every file of the
repository and fails, naming file:line, when one cites a document that is not in it: the old
specification (``SPEC``, ``SPEC.md``), the old research notes (``reference/...``, a ``providers.md``
that is not ``docs/providers.md``), the original implementation (``reconcile.rs``), anything else under
``../shared`` than the test fixtures, a ``§`` that does not point at an existing numbered section of an
existing docs file, a ``<path>.md`` that does not exist, or a Markdown link whose target (or anchor)
does not exist.

Allowed on purpose: http(s) URLs; RFC sections (``RFC 9562 §6.2``: public standards, cited like URLs);
the OpenAPI fixtures kept outside the repository (``../shared/fixtures``, ``$RECONCILER_FIXTURES``),
which are test data, not documents.

This file is the one file not scanned: it has to spell out what it looks for. The checks themselves are
tested below on small in-memory repositories, case by case.
"""

from __future__ import annotations

import os
import posixpath
import re
import subprocess
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
THIS = Path(__file__).resolve().relative_to(REPO).as_posix()

#: Folders a walk never enters (used only when git cannot list the files).
_SKIPPED_DIRS = frozenset(
    {".git", ".venv", "__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache", ".hypothesis", "build"}
)

_NUM = r"\d+(?:\.\d+)*"
_SEP = r"\s*(?:–|-|,|/|\band\b|\bor\b)\s*"
_ITEMS = rf"§{_NUM}(?:{_SEP}§{_NUM})*"
_PATH = r"(?:[\w.-]+/)*[\w.-]+\.md"
_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE)
_NUMBERED = re.compile(rf"^({_NUM})\.?\s")
_FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
_URL = re.compile(r"(?:https?|mailto):[^\s<>\"'`)\]]+")

#: `<doc> §n` or `[text](<doc>) §n`, with further `§m` joined by – , / and or.
_CITATION = re.compile(
    rf"(?:\[[^\]\n]*\]\((?P<link>{_PATH})(?:#[^)\s]*)?\)|(?<![\w./-])(?P<doc>{_PATH}))\s+(?P<items>{_ITEMS})"
)
_RFC = re.compile(rf"\bRFC\s?\d+\s+{_ITEMS}")
_BARE = re.compile(rf"§(?:{_NUM}(?:{_SEP}§{_NUM})*)?")
#: `(<doc>, "Heading")`: a section named by its heading.
_NAMED_SECTION = re.compile(rf"(?<![\w./-])(?P<doc>{_PATH}),\s+\"(?P<heading>[^\"\n]+)\"")
_MD_MENTION = re.compile(rf"(?<![\w./-])(?P<path>{_PATH})(?![\w-])")
#: `"docs" / "operations.md"`: a path built with pathlib in Python source.
_PATH_JOIN = re.compile(r"""(?P<parts>(?:["'][\w.-]+["']\s*/\s*)+)["'](?P<name>[\w.-]+\.md)["']""")
_LINK = re.compile(r"\[[^\]\n]*\]\((?P<target>[^)\s]+)(?:\s+\"[^\"]*\")?\)")

#: How a check reports a problem: its offset in the file and the message.
_Report = Callable[[int, str], None]

_FORBIDDEN: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"\bSPEC\b"), "cites SPEC, which is not in the repository: cite the docs/ section instead"),
    (
        re.compile(r"(?<![\w./-])reference/"),
        "cites reference/..., which is not in the repository: cite docs/providers.md instead",
    ),
    (re.compile(r"\breconcile\.rs\b"), "cites reconcile.rs, which is not in the repository"),
    (re.compile(r"\bCOMMIT\.txt\b"), "cites COMMIT.txt, which is not in the repository"),
    (
        re.compile(r"\bshared/(?!fixtures\b)"),
        "points into ../shared, outside the repository (only the test fixtures, ../shared/fixtures, may be named)",
    ),
)


@dataclass
class Doc:
    """What a Markdown file offers to citations: numbered sections, heading texts and anchors."""

    sections: set[str] = field(default_factory=set)
    headings: set[str] = field(default_factory=set)
    anchors: set[str] = field(default_factory=set)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def parse_doc(text: str) -> Doc:
    doc = Doc()
    seen: dict[str, int] = {}
    for match in _HEADING.finditer(_FENCE.sub("", text)):
        heading = match.group(2)
        plain = heading.replace("`", "")
        doc.headings.add(plain)
        numbered = _NUMBERED.match(plain)
        if numbered:
            doc.sections.add(numbered.group(1))
            doc.headings.add(plain[numbered.end() :])
        anchor = slug(heading)
        count = seen.get(anchor, 0)
        seen[anchor] = count + 1
        doc.anchors.add(anchor if count == 0 else f"{anchor}-{count}")
    return doc


class Repository:
    """The files to check (path -> text) and every path that exists, files and folders alike."""

    def __init__(self, texts: Mapping[str, str], others: Iterable[str] = ()) -> None:
        self.texts = dict(texts)
        files = set(self.texts) | set(others)
        self.paths = files | {parent for path in files for parent in _parents(path)}
        self.docs = {path: parse_doc(text) for path, text in self.texts.items() if path.endswith(".md")}

    def resolve(self, citing: str, target: str, *, root_too: bool = True) -> str | None:
        """`target` as the citing file means it: next to that file, else (if allowed) from the root."""
        candidates = [posixpath.normpath(posixpath.join(posixpath.dirname(citing), target))]
        if root_too:
            candidates.append(posixpath.normpath(target))
        for candidate in candidates:
            if not candidate.startswith("../") and candidate in self.paths:
                return candidate
        return None

    def problems(self) -> list[str]:
        found: list[str] = []
        for path in sorted(self.texts):
            found.extend(self.problems_in(path))
        return found

    def problems_in(self, path: str) -> list[str]:
        raw = self.texts[path]
        # URLs are allowed whatever they contain; blank them out, keeping every offset in place.
        text = _URL.sub(lambda m: " " * len(m.group(0)), raw)
        in_docs = path.startswith("docs/")
        problems: list[tuple[int, str]] = []

        def report(offset: int, message: str) -> None:
            problems.append((offset, message))

        for pattern, message in _FORBIDDEN:
            for match in pattern.finditer(text):
                report(match.start(), f"{message}: {_excerpt(text, match.start())}")

        covered: set[int] = set()
        for match in _CITATION.finditer(text):
            covered.update(i for i in range(match.start(), match.end()) if text[i] == "§")
            cited = match.group("link") or match.group("doc")
            self._check_sections(path, cited, match.group("items"), match.start(), report)
        for match in _RFC.finditer(text):
            covered.update(i for i in range(match.start(), match.end()) if text[i] == "§")
        for match in _BARE.finditer(text):
            if match.start() in covered:
                continue
            if not in_docs or match.group(0) == "§":
                report(
                    match.start(),
                    f"a § reference must name the docs file it points into (docs/<file>.md §<n>): "
                    f"{_excerpt(text, match.start())}",
                )
                continue
            for number in re.findall(_NUM, match.group(0)):
                if number not in self.docs[path].sections:
                    report(match.start(), f"§{number} is not a numbered section of {path}")

        for match in _NAMED_SECTION.finditer(text):
            target = self.resolve(path, match.group("doc"))
            doc = self.docs.get(target) if target else None
            if doc is not None and match.group("heading").replace("`", "") not in doc.headings:
                report(match.start(), f"{target} has no section {match.group('heading')!r}")

        joined: set[int] = set()
        for match in _PATH_JOIN.finditer(text):
            parts = re.findall(r"[\"']([\w.-]+)[\"']", match.group("parts"))
            joined.add(match.start("name"))
            if self.resolve(path, "/".join([*parts, match.group("name")])) is None:
                report(match.start(), f"{'/'.join(parts)}/{match.group('name')} is not in the repository")
        for match in _MD_MENTION.finditer(text):
            if match.start() in joined:
                continue
            mention = match.group("path")
            if self.resolve(path, mention) is None:
                where = " (outside docs/, write docs/...)" if "/" not in mention and not in_docs else ""
                report(match.start(), f"{mention} is not in the repository{where}")

        if path.endswith(".md"):
            for match in _LINK.finditer(text):
                self._check_link(path, match.group("target"), match.start(), report)

        return [
            f"{path}:{raw.count(chr(10), 0, offset) + 1}: {message}" for offset, message in sorted(problems)
        ]

    def _check_sections(self, path: str, cited: str, items: str, offset: int, report: _Report) -> None:
        target = self.resolve(path, cited, root_too=not path.startswith("docs/") or "/" in cited)
        doc = self.docs.get(target) if target else None
        if doc is None:
            report(offset, f"cites {cited}, which is not a docs file of the repository")
            return
        for number in re.findall(_NUM, items):
            if number not in doc.sections:
                report(offset, f"§{number} is not a numbered section of {target}")

    def _check_link(self, path: str, target: str, offset: int, report: _Report) -> None:
        if re.match(r"^(?:https?|mailto):", target):
            return
        file_part, _, anchor = target.partition("#")
        resolved = path if not file_part else self.resolve(path, file_part, root_too=False)
        if resolved is None:
            report(offset, f"link to {target}, which does not exist")
            return
        doc = self.docs.get(resolved)
        if anchor and doc is not None and anchor not in doc.anchors:
            report(offset, f"link to {target}: {resolved} has no heading with the anchor #{anchor}")


def _parents(path: str) -> Iterable[str]:
    parent = posixpath.dirname(path)
    while parent:
        yield parent
        parent = posixpath.dirname(parent)


def _excerpt(text: str, offset: int) -> str:
    start = text.rfind("\n", 0, offset) + 1
    end = text.find("\n", offset)
    return text[start : end if end != -1 else len(text)].strip()[:120]


def repository_files(root: Path) -> list[str]:
    """Every file of the repository: git's tracked and not-ignored files, else a walk without caches."""
    try:
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            check=True,
            capture_output=True,
        ).stdout.decode("utf-8")
    except (OSError, subprocess.CalledProcessError):
        found: list[str] = []
        for directory, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in _SKIPPED_DIRS and not d.endswith(".egg-info")]
            found.extend(Path(directory, name).relative_to(root).as_posix() for name in files)
        return sorted(found)
    return sorted({name for name in listed.split("\0") if name and (root / name).exists()})


def load_repository(root: Path) -> Repository:
    texts: dict[str, str] = {}
    others: list[str] = []
    for name in repository_files(root):
        file = root / name
        if name == THIS or file.is_symlink() or not file.is_file():
            others.append(name)  # a symlink's target is scanned itself
            continue
        try:
            texts[name] = file.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            others.append(name)  # not text
    return Repository(texts, others)


# -- the repository -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def repository() -> Repository:
    return load_repository(REPO)


def test_the_scan_sees_the_whole_repository(repository: Repository) -> None:
    """A scan that silently read nothing would pass for the wrong reason."""
    for expected in ("README.md", "docs/reconcile.md", "reconciler/runner.py", "reconciler/schema.sql"):
        assert expected in repository.texts
    assert "systemd/reconciler.service" in repository.texts
    assert len(repository.texts) > 100
    assert THIS not in repository.texts


def test_no_file_cites_a_document_that_is_not_in_the_repository(repository: Repository) -> None:
    problems = repository.problems()
    assert not problems, f"{len(problems)} reference(s) to documents not in the repository:\n" + "\n".join(
        problems
    )


def test_every_docs_file_numbers_each_section_once(repository: Repository) -> None:
    """Two headings with one number would make a citation ambiguous."""
    for path, text in repository.texts.items():
        if not path.startswith("docs/"):
            continue
        numbers = [
            numbered.group(1)
            for match in _HEADING.finditer(_FENCE.sub("", text))
            if (numbered := _NUMBERED.match(match.group(2).replace("`", "")))
        ]
        assert len(numbers) == len(set(numbers)), f"{path} numbers a section twice: {sorted(numbers)}"


# -- the checks, on small repositories ----------------------------------------------------------------------
DOCS = {
    "docs/a.md": "# A\n\n## 1. One\n\ntext\n\n### 2.1 Two `one`\n\n## 3. Three\n",
    "docs/b.md": "# B\n\n## 3. Three\n\n```\n## 9. not a heading in a fence\n```\n",
    "README.md": "# Readme\n",
}


def problems_of(path: str, text: str) -> list[str]:
    return Repository({**DOCS, path: text}, others=["tests/fixtures.json"]).problems_in(path)


@pytest.mark.parametrize(
    ("path", "text", "expected"),
    [
        ("reconciler/x.py", "# the pass (SPEC §4.2)\n", "cites SPEC"),
        ("docs/c.md", "The contract is SPEC.md.\n", "cites SPEC"),
        ("docs/c.md", "The contract is SPEC.md.\n", "SPEC.md is not in the repository"),
        ("x.py", "# SPEC §4.2\n", "a § reference must name the docs file"),
        ("x.py", "# fields from reference/providers.md B.3\n", "cites reference/"),
        (
            "x.py",
            '"""Order fields (providers.md B.3)."""\n',
            "providers.md is not in the repository (outside docs/",
        ),
        ("x.py", "# as in reconcile.rs\n", "cites reconcile.rs"),
        ("x.py", "# see COMMIT.txt\n", "cites COMMIT.txt"),
        ("x.py", "# /work/shared/STYLE.md\n", "points into ../shared"),
        ("x.py", "# docs/a.md §4\n", "§4 is not a numbered section of docs/a.md"),
        ("x.py", "# docs/a.md §1–§9\n", "§9 is not a numbered section of docs/a.md"),
        ("x.py", "# docs/a.md §1, §2.1 and §9\n", "§9 is not a numbered section of docs/a.md"),
        ("x.py", "# docs/b.md §9\n", "§9 is not a numbered section of docs/b.md"),
        ("x.py", "# docs/gone.md §1\n", "cites docs/gone.md, which is not a docs file"),
        ("x.py", "# see §4\n", "a § reference must name the docs file"),
        ("x.py", "# docs/a.md §1 (and §3)\n", "a § reference must name the docs file"),
        ("x.py", "# docs/gone.md\n", "docs/gone.md is not in the repository"),
        ("x.py", 'path = REPO / "docs" / "gone.md"\n', "docs/gone.md is not in the repository"),
        ("docs/c.md", "As §3 says.\n", "§3 is not a numbered section of docs/c.md"),
        ("docs/c.md", "See a.md §7.\n", "§7 is not a numbered section of docs/a.md"),
        ("docs/c.md", "See [a](a.md) §7.\n", "§7 is not a numbered section of docs/a.md"),
        ("docs/c.md", "See [x](missing.md).\n", "link to missing.md, which does not exist"),
        ("docs/c.md", "See [x](../gone/README.md).\n", "link to ../gone/README.md, which does not exist"),
        ("docs/c.md", "See [x](a.md#nope).\n", "docs/a.md has no heading with the anchor #nope"),
        ("docs/c.md", "See [x](#nope).\n", "docs/c.md has no heading with the anchor #nope"),
        ("systemd/x.service", '# (docs/a.md, "Nine")\n', "docs/a.md has no section 'Nine'"),
    ],
)
def test_a_reference_outside_the_repository_is_found(path: str, text: str, expected: str) -> None:
    problems = problems_of(path, text)
    assert any(expected in problem for problem in problems), problems
    assert all(problem.startswith(f"{path}:1: ") for problem in problems)


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("x.py", "# docs/a.md §1, §2.1 and docs/b.md §3; docs/a.md §1–§3 / §2.1\n"),
        ("x.py", "# the whole of docs/a.md, and README.md\n"),
        ("x.py", "# monotonic (RFC 9562 §6.2), resent (RFC 9112 §9.3.1.1)\n"),
        ("x.py", "# fixtures in ../shared/fixtures ($RECONCILER_FIXTURES), or shared/fixtures beside it\n"),
        ("x.py", "# https://example.com/reference/SPEC.md and https://example.com/reconcile.rs\n"),
        ("x.py", 'path = REPO / "docs" / "a.md"\n'),
        ("docs/c.md", "See §1 below and a.md §2.1, [b](b.md) §3, [a](a.md#21-two-one).\n\n## 1. Here\n"),
        (
            "docs/c.md",
            "Back to [the top](#c), [readme](../README.md), [data](../tests/fixtures.json).\n\n# C\n",
        ),
        ("systemd/x.service", '# (docs/a.md, "Two one")\n'),
    ],
)
def test_a_reference_inside_the_repository_passes(path: str, text: str) -> None:
    assert problems_of(path, text) == []


def test_each_problem_names_its_line() -> None:
    problems = problems_of("x.py", "ok\n# SPEC §4\nok\n# reconcile.rs\n")
    assert [problem.split(": ", 1)[0] for problem in problems] == ["x.py:2", "x.py:2", "x.py:4"]


def test_sections_and_anchors_come_from_headings_outside_code_fences() -> None:
    doc = parse_doc(DOCS["docs/b.md"] + "\n## 3. Three\n")
    assert doc.sections == {"3"}
    assert doc.anchors == {"b", "3-three", "3-three-1"}
    assert slug("`reconciler status`, `explain` and `doctor`") == "reconciler-status-explain-and-doctor"


def test_without_git_the_walk_lists_every_file_but_caches_and_the_virtualenv(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (
        "README.md",
        "docs/a.md",
        ".venv/lib/x.md",
        ".git/HEAD",
        "x/__pycache__/y.pyc",
        "p.egg-info/q",
    ):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")

    def no_git(*args: object, **kwargs: object) -> None:
        raise FileNotFoundError("git")

    monkeypatch.setattr(subprocess, "run", no_git)
    assert repository_files(tmp_path) == ["README.md", "docs/a.md"]
