"""The README is the front door it claims to be, and every command it, the docs/ pages and the notebooks' text
tell a user to run still parses against the code as it is now.

Commands come from ``bash``/``sh``/untagged fenced blocks and from inline spans starting with ``python``/``pip``;
backslash continuations are joined, comments dropped, ``&&``/``;``/``|`` split. For each ``python -m MODULE`` /
``python script.py`` the module or script must exist and every ``--flag`` must be one its own parser accepts
(read from its ``--help``; argparse sub-commands from theirs); ``--config=FILE[:arg]`` must build
and ``--config.a.b=...`` must name a key of it; ``pip install -r FILE`` needs FILE; a ``launch/*.sh`` script must
exist and contain the flags passed to it. ``python`` blocks must compile. Values are not checked, but every
config a command names must validate (``config.validate``, what ``main`` runs before any compute).
"""

import concurrent.futures
import functools
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.docs

REPO = Path(__file__).resolve().parents[2]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
PLACEHOLDER = re.compile(r"[$<>{}]|^/path/to|^[A-Z_]{3,}$")
COMMAND_LINE = re.compile(r"^\s*(?:[A-Z_]+=\S+\s+)*(?:python3?|pip3?|launch/\S+\.sh)\s")


def commands(markdown: str) -> list[list[str]]:
    """The README's command lines, as word lists, one per ``&&``/``;``/``|`` segment."""
    lines = []
    for lang, body in FENCE.findall(markdown):
        if lang in ("", "bash", "sh", "shell"):
            lines += re.sub(r"\\\n\s*", " ", body).splitlines()
    lines += re.findall(r"`((?:python|pip) [^`]+)`", FENCE.sub("", markdown))
    out = []
    for line in filter(COMMAND_LINE.match, lines):  # not the lines of a directory-tree diagram
        words = shlex.split(line, comments=True)
        segment = []
        for word in words + [";"]:
            if word in ("&&", "||", ";", "|", "&"):
                while segment and re.match(r"^[A-Z_]+=", segment[0]):  # FOO=bar python ...
                    segment.pop(0)
                if segment and (re.match(r"^python3?$|^pip3?$", segment[0]) or segment[0].startswith("launch/")):
                    out.append([w for w in segment if w not in ("[", "]")])
                segment = []
            else:  # optional parts as in `[--num-heads 12]` are checked as if given
                word = word[1:] if word.startswith("[-") else word
                segment.append(word[:-1] if word.endswith("]") and "[" not in word else word)
    return out


@functools.cache
def help_flags(program: tuple[str, ...]) -> frozenset[str]:
    """The ``--flags`` a program's own parser documents in its ``--help`` (argparse; absl: the main module's)."""
    result = subprocess.run([sys.executable, *program, "--help"], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600, check=False)
    text = result.stdout + result.stderr  # absl prints its help and exits 1
    assert result.returncode == 0 or "Try --helpfull" in text, f"{' '.join(program)} --help: {text[-500:]}"
    return frozenset(re.findall(r"^\s+(?:-\w, )?--(?:\[no\])?([\w.-]+)", text, re.M))  # option lines only


@functools.cache
def load_config(spec: str):
    """``FILE[:arg]`` -> its config, validated as ``main`` validates it (a bad value names its key)."""
    from usjepa_jax import config as config_lib

    path, _, arg = spec.partition(":")
    assert (REPO / path).is_file(), f"config {path} does not exist"
    module_spec = importlib.util.spec_from_file_location("readme_config", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
    try:
        config_lib.validate(config)
    except ValueError as error:  # the config's own error, naming the key
        raise AssertionError(f"config {spec} does not validate: {error}") from error
    return config


def program_of(words: list[str]) -> tuple[tuple[str, ...], list[str]]:
    """``python -m mod [sub] ARGS`` / ``python script.py [sub] ARGS`` -> (the program, incl. a sub-command; ARGS)."""
    n = 2 if words[1] == "-m" else 1
    program, rest = tuple(words[1:1 + n]), words[1 + n:]
    if rest and not rest[0].startswith("-"):  # an argparse sub-command
        program, rest = (*program, rest[0]), rest[1:]
    return program, rest


def check(words: list[str]) -> None:
    """Raise AssertionError naming what does not parse in one command."""
    if words[0].startswith("pip"):
        if "-r" in words:
            assert (REPO / words[words.index("-r") + 1]).is_file(), f"{words}: no requirements file"
        return
    if words[0].startswith("launch/"):
        text = (REPO / words[0]).read_text()
        own = words[1:words.index("--")] if "--" in words else words[1:]
        for word in own:
            assert PLACEHOLDER.search(word) or word.split("=")[0] in text, f"{words[0]} knows no {word}"
        return
    if words[1] == "-c":
        compile(words[2], "python -c", "exec")
        return
    program, rest = program_of(words)
    if program[0] == "-m":
        assert importlib.util.find_spec(program[1]) is not None, f"module {program[1]} is not importable"
    else:
        assert (REPO / program[0]).is_file(), f"script {program[0]} does not exist"
    if program in (("-m", "pip"), ("-m", "pytest")):
        return
    config, placeholder_config = None, False
    for word in rest:
        name, _, value = word.lstrip("-").partition("=")
        if not word.startswith("--"):
            continue
        if name == "config" and value and not PLACEHOLDER.search(value):
            config = load_config(value)
        elif name == "config":  # the user's own config (<configs/mine.py>): its keys cannot be checked here
            placeholder_config = True
        elif name.startswith("config.") and config is None and (placeholder_config or PLACEHOLDER.search(word)):
            continue
        elif name.startswith("config."):
            assert config is not None, f"{word} without --config"
            node = config
            for key in name.split(".")[1:]:
                assert key in node, f"{word}: the config has no key {key!r}"
                node = node[key]
        else:
            assert name in help_flags(program), f"{' '.join(program)} has no flag --{name}"


README = (REPO / "README.md").read_text()
PAGES = {"README.md": README} | {f"docs/{p.name}": p.read_text() for p in sorted((REPO / "docs").glob("*.md"))}
NOTEBOOK_TEXT = {f"notebooks/{p.name}": "\n\n".join("".join(c["source"]) for c in json.loads(p.read_text())["cells"]
                                                      if c["cell_type"] == "markdown")
                 for p in sorted((REPO / "notebooks").glob("*.ipynb"))}  # their markdown cells' commands too
COMMANDS = sorted({tuple(c) for text in [*PAGES.values(), *NOTEBOOK_TEXT.values()] for c in commands(text)})
COMMANDS = [list(c) for c in COMMANDS]


@pytest.fixture(scope="module", autouse=True)
def _start_every_program_once():
    """The programs' help, in parallel (each start imports jax: seconds)."""
    programs = {program_of(w)[0] for w in COMMANDS if w[0].startswith("python") and w[1] != "-c"}
    exist = [p for p in programs if (REPO / p[0]).is_file() or p[0] == "-m" and p[1] not in ("pip", "pytest")
             and importlib.util.find_spec(p[1])]  # (the tests name what is missing)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(help_flags, exist))


def ci_test_command() -> list[str]:
    """The pytest line of .ci/run, the script CI runs."""
    (line,) = [line for line in (REPO / ".ci/run").read_text().splitlines() if re.search(r"-m pytest\b", line)]
    return ["python" if w == "python3" else w for w in shlex.split(line)]


def test_readme_has_the_two_commands_and_the_test_command_is_what_ci_runs():
    readme = commands(README)
    main = ["python", "-m", "usjepa_jax.main", "--config=configs/base.py", "--workdir=/tmp/usjepa_base"]
    install = ["pip", "install", "-r", "requirements.txt"]
    assert install in readme and main in readme, "the main command on the built-in simulator is gone"
    assert ci_test_command() == ["python", "-m", "pytest", "-q", "-n", "2", "tests"]
    assert ci_test_command() in readme, "the README's test command differs from .ci/run's"
    # CI's run includes the documentation tests: no marker filter on the command line or in the pytest options
    addopts = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]["addopts"]
    options = ci_test_command()[3:] + shlex.split(addopts)  # after `python -m pytest`
    assert not [o for o in options if o.startswith(("-m", "--markexpr", "--deselect", "-k"))], options
    assert load_config("configs/base.py").data.source == "synthetic"  # the main command needs no data


def test_readme_is_a_front_door():
    """At most ~250 lines; the measured write-ups live in docs/ (docs/README.md indexes them)."""
    lines = README.splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines: move the narrative to docs/"
    assert (REPO / "docs/README.md").is_file()
    for page in sorted((REPO / "docs").glob("*.md")):
        if page.name != "README.md":
            assert f"]({page.name})" in PAGES["docs/README.md"], f"docs/README.md does not list {page.name}"


def test_every_figure_of_the_readme_results_is_in_a_docs_page_with_its_command():
    """The README's results section quotes figures measured in docs/; each number is found there."""
    section = re.search(r"^## Results\n(.*?)(?=^## )", README, re.M | re.S)
    assert section, "README.md has no '## Results' section"
    table = "\n".join(line for line in section.group(1).splitlines() if line.startswith("|"))
    numbers = set(re.findall(r"\d+\.\d+", table))
    assert numbers, "the results section holds no table of figures"
    assert any(c[:2] in (["python", "experiments/task_suite.py"], ["python", "experiments/sweep.py"])
               for c in commands(section.group(1))), "the results table needs the command that makes it"
    docs = "".join(text for name, text in PAGES.items() if name != "README.md")
    assert not numbers - set(re.findall(r"\d+\.\d+", docs)), numbers - set(re.findall(r"\d+\.\d+", docs))


@pytest.mark.parametrize("words", COMMANDS, ids=lambda w: " ".join(w)[:80])
def test_command_parses(words):
    sys.path.insert(0, str(REPO))
    check(words)


@pytest.mark.parametrize("page", PAGES)
def test_python_blocks_compile(page):
    for lang, body in FENCE.findall(PAGES[page]):
        if lang == "python":
            compile(body, page, "exec")


@pytest.mark.parametrize("line,problem", [
    ("python -m usjepa_jax.main --config=configs/base.py --workdr=/tmp/x", "has no flag --workdr"),
    ("python -m usjepa_jax.main --config=configs/gone.py --workdir=/tmp/x", "does not exist"),
    ("python -m usjepa_jax.main --config=configs/base.py --config.optim.lr_peek=1", "no key 'lr_peek'"),
    ("python -m usjepa_jax.nope --help", "not importable"),
    ("python -m usjepa_jax.encoders convert --input a --output b --which x", "has no flag --which"),
    ("launch/tpu_vm.sh all --no-such-flag", "knows no --no-such-flag"),
])
def test_the_checker_catches(line, problem):
    """The checker fails on what it claims to catch (and passes the same commands fixed, above)."""
    (words,) = commands(f"```bash\n{line}\n```\n")
    with pytest.raises(AssertionError, match=re.escape(problem)):
        check(words)


def test_the_checker_catches_a_config_that_does_not_validate(tmp_path):
    bad = tmp_path / "bad.py"  # base with an input size the patch does not divide
    base = str(REPO / "configs/base.py")
    bad.write_text(f"from usjepa_jax import config\n\nbase = config.sibling_config({base!r}, 'base')\n\n"
                   "def get_config(arg=None):\n    c = base.get_config(arg)\n    c.data.image_size = 100\n"
                   "    return c\n")
    (words,) = commands(f"```bash\npython -m usjepa_jax.main --config={bad} --workdir=/tmp/x\n```\n")
    with pytest.raises(AssertionError, match="does not validate.*data.image_size"):
        check(words)
