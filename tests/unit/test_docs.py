"""The README and docs/ say only what is true of the repository, checked without starting Ray:

- every fenced block has a language; every ```yaml block loads with `load_config` (a fragment as an override file
  on the defaults), except a deliberately broken one whose error a ```console block shows; every ```python block
  runs in a fresh interpreter (its asserts are the output it shows), unless PYTHON_NOT_RUN gives a reason;
- every command in ```bash / ```sh / ```console blocks: `rlhf-ray validate` runs (exit 0, or exit 1 with the error
  shown under it); `rlhf-ray run|submit|sample CONFIG [overrides]` has its flags parsed by the real CLI and its
  config and overrides validated (running them is the e2e tests' job); other `rlhf-ray` commands parse; `make X`
  names a Makefile target; `python -m M` names a module; every path named exists; anything else must be in ALLOWED,
  with its reason;
- the command-line synopsis names real subcommands and options;
- links between pages (and their #anchors) resolve;
- docs/configuration.md is what its generator writes; docs/architecture.md lists tests/unit/test_layers.py's layers
  and names functions that exist in the files it names;
- no .py, .md or .yaml file in the repository cites a repository path or an `rlhf_ray.*` module that does not exist.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rlhf_ray import yaml_tree
from rlhf_ray.cli import _parser, main
from rlhf_ray.config import Config, ConfigError, load_config

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LANGUAGES = {"yaml", "bash", "sh", "console", "text", "mermaid", "python"}

# Commands the docs may show that this test cannot run or validate, each with its reason (first word -> reason).
ALLOWED: dict[str, str] = {}
# ```python blocks that are compiled but not run, each with its reason (Block.where -> reason). None today.
PYTHON_NOT_RUN: dict[str, str] = {}
PYTHON_RUN_TIMEOUT_S = 60

REPO_PATH = re.compile(r"(?<![\w./~-])(?:rlhf_ray|actors|cluster|configs|deploy|docs|examples|tests)/[\w/.-]*?[\w-]"
                       r"\.(?:py|md|yaml|yml|json|sh)\b")
MODULE_REF = re.compile(r"(?<![\w./-])rlhf_ray(?:\.[A-Za-z_]\w*)+")


# ---------------------------------------------------------------- reading the docs


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    text: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


@dataclass
class Command:
    block: Block
    line: int
    argv: list[str]
    shown: list[str] = field(default_factory=list)  # the output printed under it (console blocks)

    @property
    def id(self) -> str:
        return f"{self.block.path.relative_to(ROOT)}:{self.line}: {shlex.join(self.argv)}"[:120]


def blocks(path: Path) -> list[Block]:
    out, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = re.match(r"^\s*(`{3,}|~{3,})\s*([\w+-]*)", lines[i])
        if not m:
            i += 1
            continue
        fence, start, body = m.group(1), i, []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            body.append(lines[i])
            i += 1
        indent = len(lines[start]) - len(lines[start].lstrip())
        out.append(Block(path, start + 1, m.group(2), "\n".join(b[indent:] for b in body) + "\n"))
        i += 1
    return out


ALL_BLOCKS = [b for doc in DOCS for b in blocks(doc)]


def commands(block: Block) -> list[Command]:
    """Shell blocks: every line a command (`\\` continues it, `#` starts a comment). Console blocks: `$ ` lines
    are commands, the lines under one are its output."""
    out: list[Command] = []
    pending, first = "", 0
    for n, raw in enumerate(block.text.splitlines(), start=block.line + 1):
        if block.lang == "console" and not raw.startswith("$ "):
            if out and raw.strip():
                out[-1].shown.append(raw.strip())
            continue
        line = raw[2:] if block.lang == "console" else raw
        if not pending:
            first = n
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        argv = shlex.split(pending + line, comments=True)
        pending = ""
        if argv:
            out.append(Command(block, first, argv))
    return out


SHELL = [c for b in ALL_BLOCKS if b.lang in ("bash", "sh", "console") for c in commands(b)]


def snippet_name(block: Block) -> str | None:
    """A yaml block whose first line is `# NAME.yaml` is that file, for the commands after it."""
    m = re.match(r"#\s*([\w.-]+\.ya?ml)\s*$", block.text.splitlines()[0]) if block.text.strip() else None
    return m.group(1) if m else None


SNIPPETS = {snippet_name(b): b for b in ALL_BLOCKS if b.lang == "yaml" and snippet_name(b)}
# Snippets a console block shows failing: `rlhf-ray validate NAME` with an error printed under it.
BROKEN = {c.argv[-1] for c in SHELL if c.shown and c.shown[0].startswith("error:") and "validate" in c.argv}


def make_targets() -> dict[str, list[str]]:
    """Makefile target -> its recipe lines."""
    targets: dict[str, list[str]] = {}
    current = None
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([\w.-]+)\s*:(?!=)", line)
        if m:
            current = targets.setdefault(m.group(1), [])
        elif line.startswith("\t") and current is not None:
            current.append(line.strip())
        elif line.strip() and not line.startswith("#"):
            current = None
    return targets


# ---------------------------------------------------------------- where commands run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The repository as the docs' commands see it (links to its top-level entries), plus the docs' named
    snippets, e.g. broken.yaml, so that error messages name the file as the docs show it."""
    d = tmp_path_factory.mktemp("docs-cwd")
    for entry in ROOT.iterdir():
        if entry.name not in SNIPPETS and entry.name != ".git":
            (d / entry.name).symlink_to(entry)
    for name, block in SNIPPETS.items():
        (d / name).write_text(block.text)
    return d


def _rlhf(args: list[str], shown: list[str], where: str) -> None:
    try:
        parsed = _parser().parse_args(args)
    except SystemExit:
        pytest.fail(f"{where}: `rlhf-ray {shlex.join(args)}` does not parse with the real CLI")
    if parsed.command == "validate":
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(args)
        broken = bool(shown) and shown[0].startswith("error:")
        text = err.getvalue() if broken else out.getvalue()
        assert rc == (1 if broken else 0), f"{where}: exit {rc}, the docs imply {1 if broken else 0}:\n{err.getvalue()}"
        printed = [line.strip() for line in text.splitlines()]
        missing = [line for line in shown if line not in printed]
        assert not missing, f"{where}: shown but not printed: {missing}\nprinted:\n{text}"
    elif parsed.command in ("run", "submit", "sample"):
        try:
            load_config(parsed.config, parsed.overrides)
        except ConfigError as e:
            pytest.fail(f"{where}: {e}")


def _check(cmd: Command) -> None:
    argv, where = list(cmd.argv), cmd.id
    while argv and re.match(r"^[A-Za-z_]\w*=", argv[0]):  # VAR=value in front of a command
        argv.pop(0)
    for token in argv:
        for path in REPO_PATH.findall(token):
            assert (ROOT / path).exists(), f"{where}: {path} does not exist"
    head = argv[0]
    if head == "rlhf-ray" or head.endswith("/rlhf-ray"):
        _rlhf(argv[1:], cmd.shown, where)
    elif head == "make":
        targets = make_targets()
        names = [a for a in argv[1:] if "=" not in a and not a.startswith("-")]
        assert names, f"{where}: `make` without a target"
        for name in names:
            assert name in targets, f"{where}: no Makefile target {name!r} (targets: {', '.join(targets)})"
        extra = [a.partition("=")[2] for a in argv[1:] if a.startswith("ARGS=")]
        for name in names:  # make run ARGS="...": the recipe's `rlhf-ray SUB CONFIG $(ARGS)` with those arguments
            for recipe in targets[name]:
                m = re.search(r"rlhf-ray (\w+) (\S+) \$\(ARGS\)", recipe)
                if m and extra:
                    _rlhf([m.group(1), m.group(2), *shlex.split(extra[0])], [], where)
    elif head == "python" or head.endswith("/python"):
        if argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, f"{where}: no module {argv[2]}"
            rest = argv[3:]
        else:
            rest = argv[1:]
        for arg in rest:
            if not arg.startswith("-") and "/" in arg:
                assert (ROOT / arg.split("::")[0]).exists(), f"{where}: {arg} does not exist"
    elif "/" in head:
        assert (ROOT / head).is_file(), f"{where}: {head} does not exist"
    else:
        assert head in ALLOWED, f"{where}: nothing checks `{head}`: check it here, or add it to ALLOWED with a reason"


# ---------------------------------------------------------------- the tests


def test_every_block_has_a_language_this_test_knows():
    bad = [f"{b.where}: ```{b.lang}" for b in ALL_BLOCKS if b.lang not in LANGUAGES]
    assert not bad, f"a fenced block needs one of {sorted(LANGUAGES)}:\n" + "\n".join(bad)


@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "python"], ids=lambda b: b.where)
def test_python_blocks_run(block, tmp_path):
    """Each ```python block runs as it is shown (its asserts are its expected output): in a fresh interpreter, in
    an empty folder, with the repository importable, within PYTHON_RUN_TIMEOUT_S. One that cannot (it needs a
    cluster, say) must be in PYTHON_NOT_RUN with its reason, and is compiled only."""
    compile(block.text, block.where, "exec")
    if block.where in PYTHON_NOT_RUN:
        return
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", block.text], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=PYTHON_RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"{block.where} fails when run:\n{proc.stderr[-2000:]}"


def test_python_blocks_not_run_are_still_in_the_docs():
    shown = {b.where for b in ALL_BLOCKS if b.lang == "python"}
    assert set(PYTHON_NOT_RUN) <= shown, f"PYTHON_NOT_RUN names blocks the docs no longer have: " \
                                         f"{set(PYTHON_NOT_RUN) - shown}"


def test_the_docs_have_commands_and_snippets_to_check():
    assert len(SHELL) >= 20 and len([b for b in ALL_BLOCKS if b.lang == "yaml"]) >= 3
    assert BROKEN <= set(SNIPPETS), f"validated but not shown as a snippet: {BROKEN - set(SNIPPETS)}"


# The deliberately broken examples (BROKEN) are left out here: their console blocks check the error they give.
@pytest.mark.parametrize("block", [b for b in ALL_BLOCKS if b.lang == "yaml" and snippet_name(b) not in BROKEN],
                         ids=lambda b: b.where)
def test_yaml_blocks_validate(block, tmp_path, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    path = tmp_path / (snippet_name(block) or "snippet.yaml")
    path.write_text(block.text)
    try:
        load_config(path)
    except ConfigError as e:
        pytest.fail(f"{block.where}: {e}")


@pytest.mark.parametrize("cmd", SHELL, ids=lambda c: c.id)
def test_commands_run_or_validate(cmd, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    _check(cmd)


def test_allowed_commands_are_used():
    used = {c.argv[0] for c in SHELL}
    assert not set(ALLOWED) - used, f"allowed but no longer in the docs: {set(ALLOWED) - used}"


def test_the_synopsis_names_real_subcommands_and_options():
    sub = next(a for a in _parser()._actions if a.__class__.__name__ == "_SubParsersAction")
    lines = [line for b in ALL_BLOCKS if b.lang == "text" for line in b.text.splitlines()
             if line.startswith("rlhf-ray ")]
    assert len(lines) >= 5
    for line in lines:
        parts = [p.split()[0] for p in line.removeprefix("rlhf-ray ").split(" | ")]
        assert all(p in sub.choices for p in parts), f"{line}: unknown subcommand"
        options = {o for p in parts for a in sub.choices[p]._actions for o in a.option_strings}
        used = set(re.findall(r"--[\w-]+", line))
        assert used <= options, f"{line}: {sorted(used - options)} are not options of {parts}"


def _slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, flags=re.M)}


def test_links_and_anchors_resolve():
    bad = []
    for doc in DOCS + [ROOT / "deploy" / "README.md"]:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+://|^mailto:", target):
                continue
            file, _, anchor = target.partition("#")
            dest = (doc.parent / file).resolve() if file else doc
            if not dest.exists():
                bad.append(f"{doc.relative_to(ROOT)}: {target}: no such file")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{doc.relative_to(ROOT)}: {target}: no such heading")
    assert not bad, "\n".join(bad)


def test_the_configuration_reference_is_generated_from_the_docstrings():
    want = yaml_tree.reference_markdown(Config, yaml_tree.REGENERATE)
    have = (ROOT / "docs" / "configuration.md").read_text()
    assert have == want, f"docs/configuration.md is out of date: run `{yaml_tree.REGENERATE}`"


def test_the_reference_covers_every_key():
    text = (ROOT / "docs" / "configuration.md").read_text()
    for key in ["name", "ppo.kl_coef", "cluster.roles.<name>.colocate_with", "reward.functions[].weight",
                "data.prompts.eval_path", "logging.wandb_project"]:
        assert f"| `{key}` |" in text, key


def _table(text: str, heading: str) -> list[list[str]]:
    """The rows (cells stripped) of the first table under `heading`."""
    section = text.split(heading, 1)[1]
    rows = []
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
        elif rows:
            break
    return rows[2:]  # without the header and the |---| line


def test_architecture_lists_the_layers_of_the_layer_test():
    spec = importlib.util.spec_from_file_location("layer_test", ROOT / "tests" / "unit" / "test_layers.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = _table((ROOT / "docs" / "architecture.md").read_text(), "## The layers")
    documented = [(row[1].strip("`"), re.findall(r"`([\w.]+)`", row[2])) for row in rows]
    assert documented == [(name, list(prefixes)) for name, prefixes in module.LAYERS]


def _defined(path: Path) -> set[str]:
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names.update(f"{node.name}.{n.name}" for n in node.body
                         if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names.update(t.id for t in targets if isinstance(t, ast.Name))
    return names


def test_the_reading_order_names_functions_that_exist():
    text = (ROOT / "docs" / "architecture.md").read_text()
    rows = _table(text, "## Reading order") + _table(text, "Going deeper, by topic:")
    order = [r for r in _table(text, "## Reading order")]
    assert 1 <= len(order) <= 8, "the reading order opens at most 8 files"
    bad = []
    for row in rows:
        cells = row[1:] if row[0].isdigit() else row
        file = ROOT / cells[0].strip("`")
        if not file.is_file():
            bad.append(f"{cells[0]}: no such file")
            continue
        missing = set(re.findall(r"`([\w.]+)`", cells[1])) - _defined(file)
        if missing:
            bad.append(f"{cells[0]}: defines no {sorted(missing)}")
    assert not bad, "\n".join(bad)


# ---------------------------------------------------------------- citations anywhere in the repository


def _repo_files() -> list[Path]:
    try:
        out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.split()
        files = [ROOT / f for f in out]
    except (OSError, subprocess.CalledProcessError):
        files = [p for p in ROOT.rglob("*") if ".venv" not in p.parts and ".git" not in p.parts]
    return [f for f in files if f.suffix in (".py", ".md", ".yaml", ".yml") and f.is_file()]


def _module_exists(dotted: str) -> bool:
    """A dotted name starting with rlhf_ray: its longest prefix that is a module or package of the repository is
    below rlhf_ray (what follows may be a function or class in it)."""
    parts = dotted.split(".")
    for n in range(len(parts), 1, -1):
        base = ROOT.joinpath(*parts[:n])
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return True
    return False


def cited(text: str) -> tuple[set[str], set[str]]:
    """(repository paths, rlhf_ray modules) a text names."""
    return set(REPO_PATH.findall(text)), set(MODULE_REF.findall(text))


def test_the_citation_patterns():
    old = "rlhf_ray/" + "ppo.py"  # spelled in two halves: this file must not cite it
    paths, modules = cited(f"see {old}, `configs/tiny/ppo.yaml`, runs/x/configs/a.yaml, deploy/kuberay/*.yaml; "
                           f"rlhf_ray.{'labelers'}:vader_warmth and rlhf_ray.stages.ppo.PPOTrainer")
    assert paths == {old, "configs/tiny/ppo.yaml"}
    assert {m for m in modules if not _module_exists(m)} == {"rlhf_ray." + "labelers"}


def test_every_cited_path_and_module_exists():
    bad = []
    for f in _repo_files():
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), start=1):
            paths, modules = cited(line)
            bad += [f"{f.relative_to(ROOT)}:{n}: {p}" for p in sorted(paths) if not (ROOT / p).exists()]
            bad += [f"{f.relative_to(ROOT)}:{n}: {m}" for m in sorted(modules) if not _module_exists(m)]
    assert not bad, "cited but not in the repository:\n" + "\n".join(bad)
