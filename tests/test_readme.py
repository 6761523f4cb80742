"""README commands: every command quoted in README.md still parses against the code as it is now.

A README that tells a user to run ``--config=configs/gone.py`` or ``--workdr=...`` fails in the first minute of
their first session, and nothing else in the test suite notices. This module reads README.md generically (no
list of commands is written down here, so commands added to the README are checked as they appear):

- commands are taken from fenced code blocks tagged ``bash``/``sh``/``shell``/``console`` or untagged, and
  from inline code spans that start like a command (`` `python -m ...` `` in prose and tables); backslash
  continuations are joined, comments dropped, ``&&`` / ``||`` / ``;`` / ``|`` / ``&`` split, redirections and
  leading ``FOO=bar`` assignments removed. Only segments whose first word is python/pip/pytest/bash/sh or a
  repository shell script are commands, so directory-tree diagrams in untagged blocks are not mistaken for them;
- ``python -m MODULE`` must be importable from the repository root, ``python path/script.py`` must exist;
  every ``--flag`` / ``-f`` must be defined by the program, read from its own help text: ``--helpfull`` first
  (absl programs print every flag), ``--help`` where that fails (argparse), run once per program with
  ``JAX_PLATFORMS=cpu`` from the repository root; argparse sub-commands (``python -m usjepa_jax.encoders
  convert ...``) are checked against the sub-command's own ``--help``; enum values are checked against the
  choices listed there;
- ``--config=PATH[:arg]`` must name an existing file whose ``get_config(arg)`` runs, and ``--config.a.b=value``
  overrides must name an existing key of that config;
- ``pip install -r FILE`` needs FILE; ``[bash] launch/X.sh ...`` needs the script, its flags and plain words
  must occur in the script's text, and flags after ``--`` are checked as flags of the program the script
  forwards them to (``python -m ...`` in the script, with the script's ``CONFIG`` default or the command's
  ``CONFIG=`` assignment);
- ``python`` blocks (and ``python -c CODE``) must compile.

Values are not checked beyond that (``--workdir=/tmp/...``, ``/path/to/...``, ``$VAR``, ``DIR`` placeholders are
fine). The self-tests at the bottom feed the checker small synthetic READMEs and broken commands, so it is shown
to fail on a bad flag, a missing config, an unknown config key and the other cases it claims to catch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import difflib
import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import threading
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
MIN_COMMANDS = 5
HELP_TIMEOUT_S = 120

SHELL_LANGS = {"", "bash", "sh", "shell", "console", "zsh", "shell-session", "shellsession", "terminal"}
PYTHON_LANGS = {"python", "py", "python3", "pycon"}
PREFIX_WORDS = {"env", "sudo", "time", "nohup", "exec", "command"}
PYTHON_RE = re.compile(r"^(?:\S*/)?python(?:\d+(?:\.\d+)*)?$")
PIP_RE = re.compile(r"^(?:\S*/)?pip\d*(?:\.\d+)*$")
ASSIGNMENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
PLACEHOLDER_RE = re.compile(r"[$<>{}*?]|(^|/)[A-Z][A-Z0-9_]{2,}(\.\w+)?(/|$)|^/path/to\b|^~")
NEGATIVE_NUMBER_RE = re.compile(r"^-\d")


# ----------------------------------------------------------------------------------------------------------------
# Markdown -> commands


@dataclasses.dataclass(frozen=True)
class Block:
    lang: str
    line: int  # 1-based README line of the first content line
    lines: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Command:
    argv: tuple[str, ...]  # after assignments and prefixes: argv[0] is python/pip/a script...
    env: tuple[tuple[str, str], ...]  # leading NAME=value assignments
    line: int
    source: str  # "```bash block", "inline code", ...
    error: str | None = None  # the command could not be tokenised

    @property
    def text(self) -> str:
        return " ".join(self.argv) if self.argv else "<unparsable>"

    def __str__(self) -> str:
        return f"README.md:{self.line} ({self.source}): {self.text}"


def fenced_blocks(markdown: str) -> list[Block]:
    """Fenced code blocks (``` or ~~~, any indentation, closing fence of the same kind and at least as long)."""
    blocks, lines = [], markdown.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)[^`]*$", lines[i])
        if not m:
            i += 1
            continue
        indent, fence, info = len(m.group(1)), m.group(2), m.group(3)
        lang = info.strip("{}.").lower()
        body, j = [], i + 1
        while j < len(lines) and not re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", lines[j]):
            line = lines[j]
            body.append(line[indent:] if line[:indent].strip() == "" else line.lstrip())
            j += 1
        blocks.append(Block(lang, i + 2, tuple(body)))
        i = j + 1
    return blocks


def inline_spans(markdown: str) -> list[tuple[int, str]]:
    """Single-backtick code spans outside fenced blocks, with their line numbers."""
    spans, in_fence, fence = [], False, ""
    for number, line in enumerate(markdown.splitlines(), 1):
        m = re.match(r"^\s*(`{3,}|~{3,})", line)
        if m and not in_fence:
            in_fence, fence = True, m.group(1)
            continue
        if in_fence:
            if re.match(rf"^\s*{re.escape(fence[0])}{{{len(fence)},}}\s*$", line):
                in_fence = False
            continue
        for span in re.finditer(r"(?<!`)`([^`\n]+)`(?!`)", line):
            spans.append((number, span.group(1).strip()))
    return spans


def strip_comment(line: str) -> str:
    """Drop a shell comment: ``#`` at the start of a word, outside quotes (``a#b`` is not a comment)."""
    quote, escaped = None, False
    for i, ch in enumerate(line):
        if escaped:
            escaped = False
        elif ch == "\\" and quote != "'":
            escaped = True
        elif quote:
            if ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or line[i - 1] in " \t;&|()"):
            return line[:i].rstrip()
    return line.rstrip()


def logical_lines(lines: tuple[str, ...], first_line: int, console: bool) -> list[tuple[int, str]]:
    """Comments dropped, backslash continuations joined, prompts (``$ ``) removed, heredoc bodies skipped."""
    out, current, start, heredoc = [], None, 0, None
    for offset, raw in enumerate(lines):
        number = first_line + offset
        if heredoc is not None:
            if raw.strip() == heredoc:
                heredoc = None
            continue
        line = raw
        if current is None:
            stripped = line.lstrip()
            if stripped.startswith("$ ") or stripped == "$":
                line = stripped[2:]
            elif console:
                continue  # console output, not a command
        line = strip_comment(line)
        if current is None:
            current, start = "", number
        if line.endswith("\\") and not line.endswith("\\\\"):
            current += line[:-1] + " "
            continue
        current += line
        if current.strip():
            out.append((start, current.strip()))
            m = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", current)
            heredoc = m.group(1) if m else None
        current = None
    if current and current.strip():
        out.append((start, current.strip()))
    return out


def tokenize(line: str) -> list[str]:
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    return list(lexer)


def split_segments(tokens: list[str]) -> list[list[str]]:
    """Split on control operators, drop redirections (and their targets) and subshell parentheses."""
    segments, current, skip_next = [], [], False
    for tok in tokens:
        if skip_next:
            skip_next = False
            continue
        if tok and set(tok) <= set("<>&|;()"):
            if "<" in tok or ">" in tok:  # > f, >> f, 2>&1, &> f, < f, <<EOF: drop the target too
                if current and current[-1].isdigit():
                    current.pop()  # the fd of 2>...
                skip_next = True
                continue
            if current:
                segments.append(current)
            current = []
            continue
        current.append(tok)
    if current:
        segments.append(current)
    return segments


def strip_optional_brackets(segment: list[str]) -> list[str]:
    """``[--num-heads 12]`` (usage-style optional arguments) -> ``--num-heads 12``; ``--x=[1,2]`` is left alone."""
    out, depth = [], 0
    for tok in segment:
        if tok.startswith("[-") and len(tok) > 2:
            tok, depth = tok[1:], depth + 1
        if depth and tok.endswith("]") and tok.count("[") < tok.count("]"):
            tok, depth = tok[:-1], depth - 1
        if tok:
            out.append(tok)
    return out


def is_script_path(word: str) -> bool:
    """A word that invokes a repository script directly: ``launch/x.sh``, ``./scripts/x``, an executable file."""
    if "/" not in word or word.endswith("/") or word.startswith(("/", "~", "$")):
        return False
    if word.endswith(".sh") or word.startswith("./"):
        return True
    path = REPO / word
    return path.is_file() and os.access(path, os.X_OK)


def command_word(word: str) -> bool:
    return bool(PYTHON_RE.match(word) or PIP_RE.match(word)) or word in ("pytest", "bash", "sh", "zsh")


def commands_from_line(line: str, number: int, source: str, strict: bool) -> list[Command]:
    """Commands of one logical shell line. ``strict`` is False for untagged blocks and inline code, where a line
    that only looks like "path   description" (a directory tree) is not a command."""
    first = re.sub(r"^(?:[A-Za-z_]\w*=\S*\s+)*", "", line).split(maxsplit=1)
    first_word = first[0] if first else ""
    if not strict and not command_word(first_word) and re.match(r"^\S+\s{2,}\S", line):
        return []  # "usjepa_jax/main.py  thin absl entry": a layout diagram
    try:
        tokens = tokenize(line)
    except ValueError as err:  # unbalanced quotes
        if command_word(first_word) or is_script_path(first_word):
            return [Command((line,), (), number, source, error=f"cannot tokenise: {err}")]
        return []
    commands = []
    for segment in split_segments(tokens):
        segment = strip_optional_brackets(segment)
        env = []
        while segment and ASSIGNMENT_RE.match(segment[0]):
            name, _, value = segment.pop(0).partition("=")
            env.append((name, value))
        while segment and segment[0] in PREFIX_WORDS:
            segment.pop(0)
            while segment and (ASSIGNMENT_RE.match(segment[0]) or segment[0].startswith("-")):
                if ASSIGNMENT_RE.match(segment[0]):
                    name, _, value = segment[0].partition("=")
                    env.append((name, value))
                segment.pop(0)
        if segment and (command_word(segment[0]) or is_script_path(segment[0])):
            commands.append(Command(tuple(segment), tuple(env), number, source))
    return commands


def extract_commands(markdown: str) -> list[Command]:
    commands = []
    for block in fenced_blocks(markdown):
        if block.lang not in SHELL_LANGS:
            continue
        source = f"```{block.lang} block" if block.lang else "``` block"
        for number, line in logical_lines(block.lines, block.line, console=block.lang == "console"):
            commands += commands_from_line(line, number, source, strict=block.lang != "")
    for number, span in inline_spans(markdown):
        commands += commands_from_line(span, number, "inline code", strict=False)
    return commands


def extract_python_blocks(markdown: str) -> list[Block]:
    return [b for b in fenced_blocks(markdown) if b.lang in PYTHON_LANGS]


def python_block_source(block: Block) -> str:
    if any(line.startswith(">>>") for line in block.lines):  # doctest / pycon style: keep the input lines
        return "\n".join(line[4:] for line in block.lines if line.startswith((">>>", "...")))
    return "\n".join(block.lines)


def check_python_source(source: str, where: str) -> list[str]:
    try:
        compile(source, where, "exec")
    except SyntaxError as err:
        return [f"{where}: does not compile: {err.msg} (line {err.lineno}: {(err.text or '').strip()!r})"]
    return []


# ----------------------------------------------------------------------------------------------------------------
# Programs' help texts


@dataclasses.dataclass(frozen=True)
class FlagInfo:
    takes_value: bool
    choices: tuple[str, ...] | None = None
    negatable: bool = False  # absl boolean: --noNAME is valid too


@dataclasses.dataclass(frozen=True)
class ProgramHelp:
    flags: dict[str, FlagInfo]  # "--name" / "-n" -> info
    subcommands: tuple[str, ...]
    style: str  # "absl" or "argparse"


_help_lock = threading.Lock()
_help_cache: dict[tuple[str, ...], ProgramHelp | str] = {}


def _run(argv: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=HELP_TIMEOUT_S, check=False)


def parse_absl_help(text: str) -> ProgramHelp:
    flags = {}
    for m in re.finditer(r"^  (?:-(\S),)?--(\[no\])?([\w.-]+):(?:\s+<([^>\n]*)>:)?", text, re.MULTILINE):
        short, negatable, name, choices = m.groups()
        info = FlagInfo(takes_value=not negatable, choices=tuple(choices.split("|")) if choices else None,
                        negatable=bool(negatable))
        flags[f"--{name}"] = info
        if short:
            flags[f"-{short}"] = info
    return ProgramHelp(flags, (), "absl")


def parse_argparse_help(text: str) -> ProgramHelp:
    """Sub-commands from the usage block (``{a,b} ...``), flags from the option lines (two-space indented, starting
    with ``-``) of the sections after it, not from the description."""
    flags, subcommands = {}, ()
    lines = text.splitlines()
    usage_end = next((i for i, line in enumerate(lines) if not line.strip()), len(lines))
    usage = "\n".join(lines[:usage_end])
    m = re.search(r"\{([\w,.-]+)\}\s+\.\.\.", usage)
    if m:
        subcommands = tuple(m.group(1).split(","))
    in_sections = False
    for line in lines[usage_end:]:
        if re.match(r"^[A-Za-z][\w ()-]*:\s*$", line):
            in_sections = True
            continue
        if not in_sections or not re.match(r"^ {1,6}-", line):
            continue
        invocation = re.split(r"\s{2,}", line.strip())[0]
        for part in invocation.split(", "):
            m = re.match(r"^(--?[\w?][\w-]*)(?:[ =](.*))?$", part.strip())
            if not m:
                continue
            value = m.group(2)
            choices = None
            if value and value.startswith("{"):
                choices = tuple(value.strip("{}").split(" ")[0].rstrip("}").split(","))
            flags[m.group(1)] = FlagInfo(takes_value=bool(value), choices=choices)
    return ProgramHelp(flags, subcommands, "argparse")


def program_source(program: tuple[str, ...]) -> str:
    """Source text of the program's entry file ("" when it cannot be found)."""
    try:
        if program[0] == "-m":
            spec = importlib.util.find_spec(program[1])
            origin = Path(spec.origin) if spec and spec.origin else None
            if spec and spec.submodule_search_locations:
                origin = Path(next(iter(spec.submodule_search_locations))) / "__main__.py"
        else:
            origin = REPO / program[0]
        return origin.read_text() if origin and origin.is_file() else ""
    except (ImportError, ValueError, OSError):
        return ""


def program_help(program: tuple[str, ...]) -> ProgramHelp | str:
    """Help of ``python PROGRAM`` (``("-m", "pkg.mod")``, ``("script.py",)``, optionally + a sub-command), or an
    error message; cached. ``--helpfull`` first (absl prints every flag with it; argparse rejects it), then
    ``--help``; programs whose source uses argparse and not absl get ``--help`` first, to save a start-up."""
    with _help_lock:
        if program in _help_cache:
            return _help_cache[program]
    source = program_source(program[:2] if program[0] == "-m" else program[:1])
    argparse_only = "argparse" in source and not re.search(r"\babsl\b.*\bapp\b|\bapp\.run\(", source)
    result: ProgramHelp | str = ""
    for option in ("--help", "--helpfull") if argparse_only else ("--helpfull", "--help"):
        try:
            run = _run([*program, option])
        except subprocess.TimeoutExpired:
            result = f"`python {' '.join(program)} {option}` did not finish in {HELP_TIMEOUT_S} s"
            continue
        text = run.stdout + run.stderr
        if "--[no]helpfull" in text:
            result = parse_absl_help(text)
            break
        if run.returncode == 0 and run.stdout.strip():
            result = parse_argparse_help(run.stdout)
            break
        tail = " | ".join(text.strip().splitlines()[-5:])
        result = f"`python {' '.join(program)} {option}` failed (exit {run.returncode}): {tail}"
    with _help_lock:
        _help_cache[program] = result
    return result


# ----------------------------------------------------------------------------------------------------------------
# Configs


def is_placeholder(value: str) -> bool:
    return bool(PLACEHOLDER_RE.search(value))


@functools.cache
def load_config(path: str, arg: str | None):
    """``get_config(arg)`` of a repository config file, as ml_collections' config_flags calls it."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    name = "_readme_config_" + re.sub(r"\W", "_", path)
    spec = importlib.util.spec_from_file_location(name, REPO / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg) if arg is not None else module.get_config()


def check_config_spec(flag: str, spec: str) -> tuple[list[str], object | None]:
    """``PATH[:arg]`` -> (problems, config or None)."""
    path, sep, arg = spec.partition(":")
    if is_placeholder(path) or path.startswith("/"):
        return [], None
    if not (REPO / path).is_file():
        return [f"{flag}={spec}: config file {path} does not exist"], None
    try:
        return [], load_config(path, arg if sep else None)
    except Exception as err:  # noqa: BLE001 - any failure of the user's config is the finding
        call = f"get_config({arg!r})" if sep else "get_config()"
        return [f"{flag}={spec}: {path} {call} raised {type(err).__name__}: {err}"], None


def check_config_key(config, dotted: str) -> str | None:
    node, walked = config, []
    for part in dotted.split("."):
        part = re.sub(r"\[\d+\]$", "", part)
        keys = list(node.keys()) if hasattr(node, "keys") else None
        if keys is None:
            return f"{'.'.join(walked)} is a {type(node).__name__}, it has no key {part!r}"
        if part not in keys:
            near = difflib.get_close_matches(part, [str(k) for k in keys], n=3)
            hint = f" (did you mean {', '.join(near)}?)" if near else ""
            return f"no key {part!r} in config.{'.'.join(walked) or '<root>'}{hint}"
        node = node[part]
        walked.append(part)
    return None


# ----------------------------------------------------------------------------------------------------------------
# Checking one command


def python_program(args: tuple[str, ...]) -> tuple[tuple[str, ...] | None, tuple[str, ...], str | None]:
    """Split ``python [opts] (-m MOD | -c CODE | SCRIPT) ARGS`` -> (program, args, code for -c)."""
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "-m" and i + 1 < len(args):
            return ("-m", args[i + 1]), args[i + 2:], None
        if tok.startswith("-m") and len(tok) > 2:
            return ("-m", tok[2:]), args[i + 1:], None
        if tok == "-c" and i + 1 < len(args):
            return None, args[i + 2:], args[i + 1]
        if tok in ("-X", "-W"):
            i += 2
            continue
        if tok.startswith("-"):
            i += 1
            continue
        return (tok,), args[i + 1:], None
    return None, (), None


@functools.cache
def package_extras() -> frozenset[str]:
    """The extras pyproject.toml declares (``pip install -e ".[cuda]"``, ``usjepa_jax[gcs] @ git+...``)."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return frozenset(project.get("optional-dependencies", {}))


def check_extras(tok: str) -> list[str]:
    """``.[a,b]`` / ``usjepa_jax[a,b]``: each extra must be declared (other packages' extras are theirs)."""
    match = re.match(r"^(\.|usjepa_jax)\[([^\]]*)\]", tok)
    if not match:
        return []
    return [f"pip {tok}: no extra {extra!r} in pyproject.toml (known: {sorted(package_extras())})"
            for extra in match.group(2).split(",") if extra.strip() not in package_extras()]


def check_pip(args: tuple[str, ...]) -> list[str]:
    problems = []
    for i, tok in enumerate(args):
        name, eq, value = tok.partition("=")
        problems += check_extras(tok)
        if name in ("-r", "--requirement", "-c", "--constraint", "-e", "--editable"):
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
            if name in ("-e", "--editable") and not value.startswith((".", "/")):
                continue  # a VCS URL or a package name
            value = value.split("[", 1)[0]  # a local project with extras: .[cuda]
            if value and not is_placeholder(value) and not value.startswith("/") and not (REPO / value).exists():
                problems.append(f"pip {name} {value}: {value} does not exist")
        elif tok.startswith("-r") and len(tok) > 2 and not (REPO / tok[2:]).exists():
            problems.append(f"pip -r {tok[2:]}: {tok[2:]} does not exist")
    return problems


def unknown_flag(name: str, help_: ProgramHelp, prog: str) -> str:
    near = difflib.get_close_matches(name, list(help_.flags), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(near)}?)" if near else ""
    return f"`{prog}` has no flag {name}{hint}"


def check_program_args(program: tuple[str, ...], args: tuple[str, ...], default_config: str | None = None
                       ) -> list[str]:
    """Flags (and sub-command, configs, config keys) of ``python PROGRAM ARGS``."""
    prog = "python " + " ".join(program)
    help_ = program_help(program)
    if isinstance(help_, str):
        return [help_]
    if help_.subcommands:
        positional = next((i for i, tok in enumerate(args) if not tok.startswith("-")), None)
        if positional is not None:
            sub = args[positional]
            if sub not in help_.subcommands:
                return [f"`{prog}` has no sub-command {sub!r} (it has {', '.join(help_.subcommands)})"]
            return (check_flags(program, help_, args[:positional], default_config)
                    + check_program_args((*program, sub), args[positional + 1:], default_config))
    return check_flags(program, help_, args, default_config)


def check_flags(program: tuple[str, ...], help_: ProgramHelp, args: tuple[str, ...], default_config: str | None
                ) -> list[str]:
    prog = "python " + " ".join(program)
    problems, configs, overrides = [], {}, []  # configs: base flag -> spec
    i = 0
    while i < len(args):
        tok = args[i]
        i += 1
        if tok == "--":
            break
        if not tok.startswith("-") or tok == "-" or NEGATIVE_NUMBER_RE.match(tok):
            continue
        name, eq, value = tok.partition("=")
        if name.startswith("--") and "." in name and name not in help_.flags:
            base = name.split(".", 1)[0]
            if base not in help_.flags:
                problems.append(unknown_flag(base, help_, prog) + f" (in {name})")
            else:
                overrides.append((base, name[len(base) + 1:]))
            continue
        info = help_.flags.get(name)
        if info is None and name.startswith("--no"):
            negated = help_.flags.get("--" + name[4:])
            info = negated if negated is not None and negated.negatable else None
            if info is not None:
                info = FlagInfo(takes_value=False)
        if info is None and re.match(r"^-[A-Za-z]{2,}$", name) and all(f"-{c}" in help_.flags for c in name[1:]):
            continue  # -vv, -qx: combined short flags
        if info is None:
            problems.append(unknown_flag(name, help_, prog))
            continue
        if not eq and info.takes_value and i < len(args) and not (args[i].startswith("-") and args[i] != "-"
                                                                  and not NEGATIVE_NUMBER_RE.match(args[i])):
            value = args[i]
            i += 1
        if info.choices and value and not is_placeholder(value) and value not in info.choices:
            problems.append(f"`{prog}` {name}={value}: not one of {', '.join(info.choices)}")
        if "config" in name.lower() and re.match(r"^[^:]+\.py(:.*)?$", value or ""):
            configs[name] = value
    for base, key in overrides:
        spec = configs.get(base, default_config if base == "--config" else None)
        if spec is None:
            problems.append(f"{base}.{key}: no {base}=FILE in the same command to check the key against")
            continue
        config = check_config_spec(base, spec)[1]  # its own problems are reported once, below
        if config is not None:
            problem = check_config_key(config, key)
            if problem:
                problems.append(f"{base}.{key} (config {spec}): {problem}")
    for flag, spec in configs.items():
        problems += check_config_spec(flag, spec)[0]
    return problems


def check_shell_script(script: str, args: tuple[str, ...], env: dict[str, str]) -> list[str]:
    path = REPO / script.removeprefix("./")
    if is_placeholder(script) or script.startswith("/"):
        return []
    if not path.is_file():
        return [f"script {script} does not exist"]
    text = path.read_text()
    own, forwarded = args, ()
    if "--" in args:
        split = args.index("--")
        own, forwarded = args[:split], args[split + 1:]
    problems = []
    for tok in own:
        word = tok.partition("=")[0] if tok.startswith("-") else tok
        checkable = (tok.startswith("-") or re.match(r"^[A-Za-z][\w-]*$", tok)) and not is_placeholder(tok)
        if checkable and not re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text):
            problems.append(f"{script}: {word!r} does not occur in the script")
    if forwarded:
        m = re.search(r"python3?\s+-m\s+([\w.]+)", text)
        if m is None:
            problems.append(f"{script}: arguments after -- but the script runs no `python -m MODULE` to check "
                            "them against")
        else:
            default = re.search(r"\bCONFIG=\"?\$\{CONFIG:-([^}\"]+)\}", text)
            config = env.get("CONFIG") or (default.group(1) if default else None)
            problems += check_program_args(("-m", m.group(1)), forwarded, default_config=config)
    return problems


def check_command(command: Command) -> list[str]:
    """Problems of one README command (empty when it parses)."""
    if command.error:
        return [command.error]
    word, args = command.argv[0], command.argv[1:]
    if word == "pytest":
        word, args = "python", ("-m", "pytest", *args)
    if PIP_RE.match(word):
        return check_pip(args)
    if word in ("bash", "sh", "zsh"):
        rest = [a for a in args if not a.startswith("-")]
        if "-c" in args or not rest:
            return []
        return check_shell_script(rest[0], tuple(args[args.index(rest[0]) + 1:]), dict(command.env))
    if not PYTHON_RE.match(word):
        return check_shell_script(word, args, dict(command.env))
    program, rest, code = python_program(args)
    if code is not None:
        return check_python_source(code, "python -c")
    if program is None:
        return []
    if program[0] == "-m":
        module = program[1]
        if module == "pip":
            return check_pip(rest)
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return [f"module {module} is not importable from the repository root"]
    else:
        script = program[0]
        if is_placeholder(script) or script.startswith("/"):
            return []
        if not (REPO / script).is_file():
            return [f"script {script} does not exist"]
    return check_program_args(program, rest)


def prefetch_help(commands: list[Command], workers: int = 3) -> None:
    """Run the commands' programs' help in parallel (each imports jax: seconds), then their sub-commands'."""
    invocations = {}
    for command in commands:
        word, args = (command.argv[0], command.argv[1:]) if command.argv else ("", ())
        if word == "pytest":
            word, args = "python", ("-m", "pytest", *args)
        if PYTHON_RE.match(word) and not command.error:
            program, rest, _ = python_program(args)
            if program and program != ("-m", "pip") and (program[0] == "-m" or (REPO / program[0]).is_file()):
                invocations.setdefault(program, []).append(rest)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        helps = dict(zip(invocations, pool.map(program_help, invocations)))
        subprograms = set()
        for program, help_ in helps.items():
            if isinstance(help_, ProgramHelp) and help_.subcommands:
                for rest in invocations[program]:
                    sub = next((tok for tok in rest if not tok.startswith("-")), None)
                    if sub in help_.subcommands:
                        subprograms.add((*program, sub))
        list(pool.map(program_help, sorted(subprograms)))


# ----------------------------------------------------------------------------------------------------------------
# The README's commands

README_TEXT = README.read_text()
COMMANDS = extract_commands(README_TEXT)
PYTHON_BLOCKS = extract_python_blocks(README_TEXT)


def shorten(text: str, width: int = 90) -> str:
    text = re.sub(r"\s+", " ", text)
    return text if len(text) <= width else text[: width - 3] + "..."


@pytest.fixture(scope="module")
def prefetched_help():
    """Run the programs' help in parallel (each imports jax: seconds), so that the per-command tests hit the cache."""
    prefetch_help(COMMANDS)


def test_readme_has_commands():
    """A parser that finds nothing would pass every per-command test vacuously."""
    assert len(COMMANDS) >= MIN_COMMANDS, [str(c) for c in COMMANDS]
    kinds = {c.argv[0] for c in COMMANDS}
    assert any(PYTHON_RE.match(k) for k in kinds), kinds
    assert any("usjepa_jax.main" in c.text for c in COMMANDS), [str(c) for c in COMMANDS]


@pytest.mark.parametrize("command", COMMANDS, ids=[shorten(c.text) for c in COMMANDS])
def test_readme_command(command, prefetched_help):
    problems = check_command(command)
    assert not problems, f"{command}\n  " + "\n  ".join(problems)


def test_readme_python_blocks_compile():
    problems = [p for b in PYTHON_BLOCKS for p in check_python_source(python_block_source(b), f"README.md:{b.line}")]
    assert not problems, "\n".join(problems)


# ----------------------------------------------------------------------------------------------------------------
# Self-tests of the parser and the checker on synthetic snippets

SNIPPET = """\
Intro with `python -m usjepa_jax.main --config=configs/base.py` inline and `config.optim.lr_peak` prose.

```bash
# a comment line: python -m not.a.command
FOO=1 BAR="a b" python -m usjepa_jax.main --config=configs/base.py \\
    --workdir=/tmp/x  # trailing comment --bogus
pip install -r requirements.txt && python -m pytest -q tests | tee log.txt 2>&1
cd somewhere; launch/tpu_vm.sh --dry-run delete
python -m usjepa_jax.encoders convert --input /path/to/ckpt.pth --output /tmp/t [--num-heads 12]
gcloud compute tpus list
```

```
configs/            base.py (CPU) [:smoke], mae.py
usjepa_jax/main.py  thin absl entry
   |-- config.py    the schema
launch/             tpu_vm.sh
```

```python
print("hello")
```

```json
{"python": "-m nothing"}
```
"""


def test_extracts_commands_from_blocks_and_inline_code():
    commands = extract_commands(SNIPPET)
    assert [c.text for c in commands] == [
        "python -m usjepa_jax.main --config=configs/base.py --workdir=/tmp/x",
        "pip install -r requirements.txt",
        "python -m pytest -q tests",
        "launch/tpu_vm.sh --dry-run delete",
        "python -m usjepa_jax.encoders convert --input /path/to/ckpt.pth --output /tmp/t --num-heads 12",
        "python -m usjepa_jax.main --config=configs/base.py",
    ]
    assert dict(commands[0].env) == {"FOO": "1", "BAR": "a b"}
    assert commands[0].line == 5 and commands[0].source == "```bash block"
    assert commands[-1].source == "inline code"
    assert [b.lines for b in extract_python_blocks(SNIPPET)] == [('print("hello")',)]


def test_layout_diagram_is_not_a_command():
    diagram = "```\nusjepa_jax/main.py  thin absl entry\nlaunch/tpu_vm.sh    the TPU script\n   |-- a.py   b\n```\n"
    assert extract_commands(diagram) == []


def test_comment_inside_a_word_and_heredoc():
    text = "```bash\npython -m pytest -k 'a#b' tests # c\ncat <<EOF\npython -m not_run\nEOF\n```\n"
    assert [c.argv for c in extract_commands(text)] == [("python", "-m", "pytest", "-k", "a#b", "tests")]


def one(line: str) -> Command:
    commands = extract_commands(f"```bash\n{line}\n```\n")
    assert len(commands) == 1, commands
    return commands[0]


def problems_of(line: str) -> str:
    return "\n".join(check_command(one(line)))


def test_snippet_commands_pass():
    for command in extract_commands(SNIPPET):
        assert check_command(command) == [], command


def test_detects_unknown_flag():
    assert "no flag --workdr" in problems_of("python -m usjepa_jax.main --config=configs/base.py --workdr=/tmp/x")
    assert "did you mean --workdir" in problems_of("python -m usjepa_jax.main --workdr /tmp/x")


def test_flag_mentioned_only_in_a_docstring_is_unknown():
    # usjepa_jax.encoders's description shows `[--format auto]` for convert; the top-level parser has no --format
    assert "no flag --format" in problems_of("python -m usjepa_jax.encoders --format=auto convert")


def test_detects_missing_config_file():
    assert "configs/nope.py does not exist" in problems_of("python -m usjepa_jax.main --config=configs/nope.py")


def test_detects_rejected_config_arg():
    problems = problems_of("python -m usjepa_jax.main --config=configs/paper_vitb16.py:smoke --workdir=/tmp/x")
    assert "get_config('smoke') raised ValueError" in problems
    assert problems_of("python -m usjepa_jax.main --config=configs/base.py:smoke --workdir=/tmp/x") == ""


def test_detects_unknown_config_key():
    problems = problems_of("python -m usjepa_jax.main --config=configs/base.py --config.optim.lr_peek=1e-4")
    assert "no key 'lr_peek' in config.optim" in problems and "lr_peak" in problems
    assert "has no key" in problems_of("python -m usjepa_jax.main --config=configs/base.py --config.seed.x=1")
    assert "no --config=FILE" in problems_of("python -m usjepa_jax.main --config.seed=1")
    assert problems_of("python -m usjepa_jax.main --config=configs/base.py --config.optim.lr_peak=1e-4") == ""


def test_detects_missing_module_and_script():
    assert "module usjepa_jax.nope is not importable" in problems_of("python -m usjepa_jax.nope --x=1")
    assert "script experiments/nope.py does not exist" in problems_of("python experiments/nope.py --out=/tmp/o")


def test_detects_bad_enum_value():
    assert "not one of student, teacher, random" in problems_of(
        "python -m usjepa_jax.evaluate --config=configs/base.py --encoder=techer")


def test_subcommands_use_their_own_help():
    assert "no sub-command 'convrt'" in problems_of("python -m usjepa_jax.encoders convrt --input a --output b")
    assert "no flag --which" in problems_of("python -m usjepa_jax.encoders convert --input a --output b --which x")
    assert problems_of("python -m usjepa_jax.encoders export --workdir a --output b --which teacher") == ""
    assert "no key 'nope'" in problems_of(
        "python -m usjepa_jax.encoders cache --config configs/base.py --output /tmp/c --config.nope=1")


def test_optional_brackets_are_checked_as_flags():
    assert one("python -m m convert [--num-heads 12] [--normalize] --x=[1,2]").argv[4:] == (
        "--num-heads", "12", "--normalize", "--x=[1,2]")
    assert problems_of("python -m usjepa_jax.encoders convert --input a --output b [--num-heads 12]") == ""
    # argparse would accept the abbreviation; the README should not rely on it
    assert "no flag --num-head" in problems_of("python -m usjepa_jax.encoders convert --input a [--num-head 12]")


def test_detects_pip_and_launch_problems():
    assert "requirements-gpu.txt does not exist" in problems_of("pip install -r requirements-gpu.txt")
    assert problems_of('pip install -e ".[cuda,gcs]"') == ""
    assert "no extra 'cuda11'" in problems_of('pip install -e ".[cuda11]"')
    assert "no extra 'dicm'" in problems_of('pip install "usjepa_jax[dicm] @ git+https://x.invalid/u.git"')
    assert "launch/nope.sh does not exist" in problems_of("bash launch/nope.sh --dry-run")
    assert "'--dry-runn' does not occur" in problems_of("launch/tpu_vm.sh --dry-runn delete")
    assert "'delet' does not occur" in problems_of("launch/tpu_vm.sh delet")
    assert "no key 'nope'" in problems_of("BUCKET=b launch/tpu_vm.sh all -- --config.nope=3")
    assert "no flag --wrkdir" in problems_of("launch/slurm_gpu.sh --dry-run -- --wrkdir=/x")
    # CONFIG= on the command line replaces the script's default config
    assert problems_of("CONFIG=configs/base.py launch/slurm_gpu.sh -- --config.optim.lr_peak=1") == ""


def test_detects_python_that_does_not_compile():
    block = extract_python_blocks("```python\nprint('x'\n```\n")[0]
    assert "does not compile" in "\n".join(check_python_source(python_block_source(block), "README.md:2"))
    assert "does not compile" in problems_of("python -c 'import os; os.path.join('")


def test_unbalanced_quotes_fail():
    assert "cannot tokenise" in problems_of("python -m usjepa_jax.main --config='configs/base.py")
