"""The container image and the served page, checked statically: no Docker engine, no network.

The Dockerfile is parsed the way `docker build` reads it (continuations, comments, exec and shell
forms); every COPY source must exist and survive .dockerignore; the image must run `kiln serve`
as a non-root user, reachable from outside the container, with a healthcheck on /health.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from fnmatch import fnmatchcase
from html.parser import HTMLParser
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: pytest depends on tomli there
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
CONSTRAINTS = REPO / "constraints.txt"
PYPROJECT = REPO / "pyproject.toml"
PAGE = REPO / "src" / "kiln" / "deploy" / "page.html"


# --- Dockerfile parsing -------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str  # upper-case: FROM, RUN, COPY, ...
    args: str  # everything after the keyword, continuations joined
    line: int  # where it starts, for messages

    def words(self) -> list[str]:
        """Exec form (a JSON array) as is; shell form split like a shell would."""
        text = self.args.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                value = None
            if isinstance(value, list) and all(isinstance(v, str) for v in value):
                return value
        return shlex.split(text)

    def is_exec_form(self) -> bool:
        try:
            return isinstance(json.loads(self.args.strip()), list)
        except json.JSONDecodeError:
            return False


def parse_dockerfile(text: str) -> list[Instruction]:
    """Instructions in order. A trailing backslash continues a line; a line whose first non-blank
    character is # is a comment (parser directives included), also inside a continuation."""
    instructions: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        if not parts:
            start = number
        continued = stripped.endswith("\\")
        parts.append(stripped[:-1].rstrip() if continued else stripped)
        if not continued:
            keyword, _, args = " ".join(p for p in parts if p).partition(" ")
            instructions.append(Instruction(keyword.upper(), args.strip(), start))
            parts = []
    assert not parts, "the Dockerfile ends inside a line continuation"
    return instructions


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, ins in enumerate(instructions) if ins.keyword == "FROM"]
    assert starts, "no FROM"
    return instructions[starts[-1] :]


def only(stage: list[Instruction], keyword: str) -> Instruction:
    """The instruction that takes effect: Docker keeps the last ENTRYPOINT/CMD/HEALTHCHECK."""
    found = [ins for ins in stage if ins.keyword == keyword]
    assert found, f"the final stage has no {keyword}"
    return found[-1]


def copy_sources(ins: Instruction) -> list[str]:
    """The sources of a COPY/ADD from the build context (not `--from=stage`); [] otherwise."""
    words = ins.words()
    flags = [w for w in words if w.startswith("--")]
    if any(f.startswith("--from=") for f in flags):
        return []
    rest = [w for w in words if not w.startswith("--")]
    assert len(rest) >= 2, f"line {ins.line}: {ins.keyword} needs a source and a destination"
    return rest[:-1]


@pytest.fixture(scope="module")
def instructions() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def stage(instructions) -> list[Instruction]:
    return final_stage(instructions)


def test_parser_handles_continuations_and_comments():
    text = (
        "# syntax=docker/dockerfile:1\n"
        "FROM python:3.11-slim AS base\n"
        "\n"
        "RUN apt-get update \\\n"
        "    # a comment inside a continuation\n"
        "    && echo hi\n"
        'CMD ["a", "--b"]\n'
        "copy --chown=1:1 x y/ z/\n"
        "COPY --from=base /a /b\n"
    )
    parsed = parse_dockerfile(text)
    assert [i.keyword for i in parsed] == ["FROM", "RUN", "CMD", "COPY", "COPY"]
    assert parsed[1].args == "apt-get update && echo hi"
    assert parsed[1].line == 4
    assert parsed[2].words() == ["a", "--b"] and parsed[2].is_exec_form()
    assert copy_sources(parsed[3]) == ["x", "y/"]
    assert copy_sources(parsed[4]) == []


# --- .dockerignore -------------------------------------------------------------------------------


def read_dockerignore(path: Path = DOCKERIGNORE) -> list[tuple[bool, list[str]]]:
    """(is_exception, pattern segments) per rule, in order. Like Docker: patterns are relative to
    the context root (a leading / is dropped), and `**` matches any number of directories."""
    rules = []
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:].strip() if negated else line
        segments = [s for s in pattern.strip("/").split("/") if s not in ("", ".")]
        if segments:
            rules.append((negated, segments))
    return rules


def _matches(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_matches(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatchcase(path[0], pattern[0]) and _matches(pattern[1:], path[1:])


def ignored(rel: str, rules: list[tuple[bool, list[str]]]) -> bool:
    """Whether the context leaves out `rel` (a path relative to the repo root). A rule that matches
    a parent folder covers everything inside it; the last matching rule wins."""
    parts = [p for p in rel.strip("/").split("/") if p not in ("", ".")]
    result = False
    for negated, pattern in rules:
        if any(_matches(pattern, parts[:n]) for n in range(1, len(parts) + 1)):
            result = not negated
    return result


def test_dockerignore_matcher(tmp_path: Path):
    rules_file = tmp_path / ".dockerignore"
    rules_file.write_text("# comment\n/runs\n**/__pycache__\n*.md\n!README.md\ndocs/*.txt\n")
    rules = read_dockerignore(rules_file)
    assert ignored("runs", rules) and ignored("runs/a/model.pt", rules)
    assert not ignored("src/runs/x.py", rules), "a pattern without ** is anchored at the root"
    assert ignored("src/kiln/__pycache__/cli.cpython-311.pyc", rules)
    assert ignored("CHANGES.md", rules) and not ignored("README.md", rules)
    assert not ignored("src/notes.md", rules), "* does not cross a /"
    assert ignored("docs/a.txt", rules) and not ignored("docs/sub/a.txt", rules)
    assert not ignored("src/kiln/cli.py", rules)


def is_cache(rel: Path) -> bool:
    """Files under a copied folder that the image may go without."""
    return (
        any(part == "__pycache__" or part.endswith(".egg-info") for part in rel.parts)
        or rel.suffix in (".pyc", ".pyo")
        or any(part.startswith(".") and part.endswith("_cache") for part in rel.parts)
    )


def test_copy_sources_exist_and_reach_the_build_context(instructions):
    rules = read_dockerignore()
    copies = [ins for ins in instructions if ins.keyword in ("COPY", "ADD")]
    assert copies, "nothing is copied into the image"
    for ins in copies:
        for source in copy_sources(ins):
            assert "://" not in source, f"line {ins.line}: {source} is fetched, not copied"
            assert not Path(source).is_absolute() and ".." not in Path(source).parts, source
            matches = sorted(REPO.glob(source.rstrip("/"))) if source.strip("/.") else [REPO]
            assert matches, f"line {ins.line}: {ins.keyword} {source}: no such file in the repo"
            for match in matches:
                rel = match.relative_to(REPO).as_posix()
                assert not ignored(rel, rules), f"line {ins.line}: .dockerignore excludes {rel}"
                if match.is_dir():
                    files = [p.relative_to(REPO) for p in match.rglob("*") if p.is_file()]
                    dropped = [
                        f.as_posix()
                        for f in files
                        if not is_cache(f) and ignored(f.as_posix(), rules)
                    ]
                    assert not dropped, f".dockerignore drops files the image needs: {dropped}"
                    assert any(not ignored(f.as_posix(), rules) for f in files), rel


@pytest.mark.parametrize(
    "heavy",
    [".git/HEAD", ".venv/bin/python", "runs/mnist/last.pt", "test-output/x.png", ".gpudata/p0",
     ".whl/torch.whl", "benchmarks/run.py", "tests/test_cli.py", "src/kiln/__pycache__/a.pyc",
     "src/kiln.egg-info/PKG-INFO", ".ruff_cache/x", ".pytest_cache/x", "export/model.onnx"],
)  # fmt: skip
def test_dockerignore_keeps_the_context_small(heavy: str):
    assert ignored(heavy, read_dockerignore()), f"{heavy} would be sent to the docker daemon"


def test_package_page_reaches_the_image():
    """`pip install .` (not -e) only installs non-Python files that setuptools is told about, so
    without package-data the container's GET / would have no page to serve."""
    rel = PAGE.relative_to(REPO / "src").as_posix()  # kiln/deploy/page.html
    assert not ignored(PAGE.relative_to(REPO).as_posix(), read_dockerignore())
    setuptools = tomllib.loads(PYPROJECT.read_text()).get("tool", {}).get("setuptools", {})
    declared = []
    for package, patterns in setuptools.get("package-data", {}).items():
        prefix = "" if package in ("*", "") else package.replace(".", "/") + "/"
        if rel.startswith(prefix):
            declared += [p for p in patterns if fnmatchcase(rel[len(prefix) :], p)]
    manifest = REPO / "MANIFEST.in"
    in_manifest = manifest.is_file() and any(
        word in manifest.read_text() for word in ("page.html", "*.html")
    )
    assert declared or in_manifest, (
        "pyproject.toml must ship the page in the wheel: "
        '[tool.setuptools.package-data] kiln = ["deploy/*.html"]'
    )


# --- What the image runs -------------------------------------------------------------------------


def test_runs_as_a_non_root_user_before_the_entrypoint(stage):
    users = [i for i, ins in enumerate(stage) if ins.keyword == "USER"]
    entrypoint = max(i for i, ins in enumerate(stage) if ins.keyword == "ENTRYPOINT")
    assert users and users[0] < entrypoint, "switch to a non-root USER before ENTRYPOINT"
    user = stage[users[-1]].args.split(":")[0].strip()
    assert user not in ("root", "0", ""), f"the last USER is {user!r}"
    if not user.isdigit():
        created = [
            ins
            for ins in stage[: users[-1]]
            if ins.keyword == "RUN"
            and re.search(r"\b(useradd|adduser)\b", ins.args)
            and re.search(rf"\s{re.escape(user)}(\s|$|&|;)", ins.args)
        ]
        assert created, f"USER {user} is never created in the final stage"
        assert re.search(r"(-u|--uid)[ =]10001\b", created[-1].args), "uid 10001, fixed"


def test_healthcheck_hits_health_without_curl(stage):
    check = only(stage, "HEALTHCHECK")
    assert not check.args.upper().startswith("NONE")
    assert "/health" in check.args
    assert not re.search(r"\b(curl|wget)\b", check.args), "python:*-slim has no curl or wget"
    port = re.search(r"127\.0\.0\.1:(\d+)/health", check.args)
    cmd = only(stage, "CMD").words()
    assert port and "--port" in cmd and cmd[cmd.index("--port") + 1] == port.group(1)
    assert port.group(1) in only(stage, "EXPOSE").args.split()


def test_entrypoint_is_kiln_serve_in_exec_form(stage):
    entrypoint = only(stage, "ENTRYPOINT")
    # Shell form would ignore CMD and keep SIGTERM from reaching the server.
    assert entrypoint.is_exec_form(), entrypoint.args
    assert entrypoint.words()[:2] == ["kiln", "serve"]


def test_cmd_listens_on_all_interfaces(stage):
    """`kiln serve` binds 127.0.0.1 by default: inside a container nobody could reach that."""
    cmd = only(stage, "CMD")
    assert cmd.is_exec_form(), cmd.args
    words = cmd.words()
    hosts = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--host"]
    hosts += [w.split("=", 1)[1] for w in words if w.startswith("--host=")]
    assert hosts == ["0.0.0.0"], words
    assert words[0] == "/model", "the export is mounted at /model"


def test_pip_install_uses_the_constraints(stage):
    installs = [ins for ins in stage if ins.keyword == "RUN" and "pip install" in ins.args]
    assert installs, "no pip install"
    words = installs[-1].words()
    pairs = list(zip(words, words[1:], strict=False))
    assert ("-c", "constraints.txt") in pairs or "--constraint=constraints.txt" in words, words
    assert "download.pytorch.org/whl/cpu" in installs[-1].args, "CPU wheels, not CUDA"
    copied_before = {
        Path(source).name
        for ins in stage[: stage.index(installs[-1])]
        if ins.keyword in ("COPY", "ADD")
        for source in copy_sources(ins)
    }
    assert {"constraints.txt", "pyproject.toml"} <= copied_before


# --- constraints.txt -----------------------------------------------------------------------------


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", requirement)
    assert match, f"cannot read a package name from {requirement!r}"
    return normalise(match.group(1))


def pins() -> dict[str, str]:
    pinned = {}
    for raw in CONSTRAINTS.read_text().splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version.strip(), f"constraints.txt: {raw!r} is not NAME==VERSION"
            pinned[requirement_name(name)] = version.strip()
    return pinned


def test_constraints_pin_torch():
    pinned = pins()
    assert pinned.get("torch") == "2.14.1"
    assert pinned.get("torchvision") == "0.29.1"


def test_every_dependency_is_pinned():
    dependencies = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    pinned = pins()
    missing = sorted({requirement_name(d) for d in dependencies} - pinned.keys())
    assert not missing, f"pin these in constraints.txt: {missing}"
    for dependency in dependencies:  # an exact pin in pyproject must agree with the constraint
        exact = re.search(r"===?\s*([^\s,;]+)", dependency)
        if exact:
            assert pinned[requirement_name(dependency)] == exact.group(1), dependency


# --- The served page -----------------------------------------------------------------------------


class PageParser(HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: dict[str, tuple[str, dict[str, str]]] = {}
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attributes = {k: v or "" for k, v in attrs}
        if "id" in attributes:
            self.ids[attributes["id"]] = (tag, attributes)
        for key in ("src", "href", "action", "srcset", "poster", "data"):
            if key in attributes:
                self.links.append(attributes[key])


@pytest.fixture(scope="module")
def page() -> tuple[str, PageParser]:
    text = PAGE.read_text(encoding="utf-8")
    parser = PageParser()
    parser.feed(text)
    return text, parser


def test_page_is_self_contained(page):
    text, parser = page
    external = [
        link
        for link in parser.links
        if "http://" in link or "https://" in link or link.strip().startswith("//")
    ]
    assert not external, external
    assert "//cdn" not in text
    assert not re.search(r"https?://", text), "the page works offline: no URLs at all"
    assert not re.search(r"@import|url\(\s*['\"]?(https?:)?//", text)


def test_page_has_the_hooks_the_browser_tests_use(page):
    text, parser = page
    for element_id in ("file", "result", "top-label", "error"):
        assert element_id in parser.ids, f'no element with id="{element_id}"'
    tag, attributes = parser.ids["file"]
    assert tag == "input" and attributes.get("type") == "file"
    assert attributes.get("accept") == "image/*"
    # Selenium's send_keys needs an input that is really there, not display:none.
    assert "hidden" not in attributes and "display" not in attributes.get("style", "")
    assert not re.search(r"#file\s*\{[^}]*display\s*:\s*none", text)
    assert "innerHTML" not in text, "server text goes in through textContent only"
