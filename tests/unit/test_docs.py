"""The commands and links of README.md and docs/*.md still work: the docs cannot drift.

Every line of a fenced ``bash``/``sh``/``console`` block, and every inline code span that
starts with an msslab command, is checked by what it runs:

- ``msslab-<cmd> ...`` (also ``.venv/bin/msslab-<cmd>`` and ``python -m msslab.<cmd>``):
  composed with Hydra from the real ``conf/`` exactly as written (and its interpolations
  resolved), with the command's own primary config (train, eval, separate, compare; search composes train). ``--config-dir D``
  and ``hydra.searchpath=[file://D]`` add D to the search path (a folder that the page
  writes earlier with ``cat > D/... <<'TAG'`` is written to a temporary folder first).
  With ``-m`` or for ``msslab-search``, a command-line sweep that chooses a config group
  (``model=lstm,gru``, ``'augmentation=[],[reverb]'``) is composed once per value, any
  other sweep (``seed=1,2,3``, ``choice(...)``) at its first value; Optuna's
  ``interval(a,b)`` at ``a``. ``msslab-compare``'s bare directories become ``dirs=[...]``
  and its ``baseline=`` value is quoted, as the command does.
- ``python benchmarks/<x>.py ...``: the script exists and an argparse parser rebuilt from its
  ``add_argument`` calls (options, ``nargs``, ``action``) accepts the arguments.
- ``bash <file>`` and ``scripts/<file> ...``: the file exists. ``python -m pytest tests/<file>``:
  the test file exists. A leading ``sudo`` (``sudo -E``) is dropped before the check.
- ``from msslab.<x> import <names>`` in a fenced ``python`` block: the module has those names.
- Anything else (``pip``, ``wandb``, ``unzip``, ``mkdir``, ``python -c``, shell builtins) is
  another tool's command and not checked.

Placeholders (the rule): ``<...>`` inside an argument becomes ``x`` (``<run>``, ``<date_time>``),
one that is a whole argument is dropped (``<your parameters>``);
a token that is exactly ``...`` is dropped (``msslab-train -m ... hydra/launcher=gpus``);
``key=...`` stays a literal string value (``ckpt=...``). Shell variables set in the same
block (``B="--budget-minutes 20"``) are expanded. Flags that print instead of run
(``--cfg``, ``-p``, ``--resolve``, ``--info``, ``--help``) are dropped.

Links ``[text](target)`` outside code blocks (also in CHANGELOG.md and experiments/*/README.md): a relative target must be a file (or
folder) of the repository, and a ``#anchor`` must be a heading of that file (GitHub's slug).
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import re
import shlex
from functools import lru_cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONF = REPO / "conf"
DOCS = [REPO / "README.md", *sorted(p for p in (REPO / "docs").glob("*.md") if not p.name.startswith("_"))]
# links are also checked in the history and the recorded studies (their commands are records, not checked)
LINKED = [*DOCS, REPO / "CHANGELOG.md", *sorted((REPO / "experiments").glob("*/README.md"))]
SHELL_LANGS = {"bash", "sh", "shell", "console"}
COMMANDS = {"train": "train", "eval": "eval", "separate": "separate", "compare": "compare", "search": "train"}
PRINT_FLAGS_WITH_VALUE = {"--cfg", "-c", "-p", "--package", "--info", "-i"}
PRINT_FLAGS = {"--resolve", "--help", "-h", "--hydra-help"}


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


# --- reading the docs -------------------------------------------------------------------------

def fenced_blocks(path: Path):
    """``(lang, [(line_number, text), ...])`` for every fenced block of ``path``."""
    lang, lines = None, []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            if lang is None:
                lang, lines = stripped[3:].strip().lower() or "text", []
            else:
                yield lang, lines
                lang = None
        elif lang is not None:
            lines.append((number, line))


def prose_lines(path: Path):
    """``(line_number, text)`` of every line outside fenced blocks."""
    inside = False
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip().startswith("```"):
            inside = not inside
        elif not inside:
            yield number, line


def shell_commands(path: Path):
    """``(line_number, argv, files)`` per command of the shell blocks; ``files``: {path: text} the block writes."""
    files = {}  # a page's blocks run in order in one folder: a file one block writes, later ones see
    for lang, lines in fenced_blocks(path):
        if lang not in SHELL_LANGS:
            continue
        variables, logical = {}, []
        i = 0
        while i < len(lines):
            number, text = lines[i]
            heredoc = re.search(r"cat\s+>\s*(\S+)\s+<<-?\s*'?(\w+)'?", text)
            if heredoc:  # a file the block writes: keep it, do not run its lines
                body, i = [], i + 1
                while i < len(lines) and lines[i][1].strip() != heredoc.group(2):
                    body.append(lines[i][1])
                    i += 1
                files[heredoc.group(1)] = "\n".join(body) + "\n"
                text = text[:heredoc.start()] + text[heredoc.end():]
            while text.rstrip().endswith("\\") and i + 1 < len(lines):  # continuation lines
                i += 1
                text = text.rstrip()[:-1] + " " + lines[i][1]
            logical.append((number, text))
            i += 1
        for number, text in logical:
            for name, value in variables.items():
                text = text.replace("$" + name, value)
            text = fill(text)
            try:
                tokens = shlex.split(text, comments=True)
            except ValueError as exc:
                pytest.fail(f"{rel(path)}:{number}: not a shell command ({exc}): {text}")
            for argv in split_on_operators(tokens):
                assignment = re.fullmatch(r"([A-Za-z_]\w*)=(.*)", argv[0]) if len(argv) == 1 else None
                if assignment:
                    variables[assignment.group(1)] = assignment.group(2)
                else:
                    yield number, argv, files


def split_on_operators(tokens):
    argv = []
    for token in tokens:
        if token in ("&&", "||", ";", "|"):
            if argv:
                yield argv
            argv = []
        else:
            argv.append(token)
    if argv:
        yield argv


def inline_commands(path: Path):
    """``(line_number, argv)`` of inline code spans that start with an msslab command."""
    text = "\n".join(line if not inside else "" for inside, line in _mask_fences(path))
    for match in re.finditer(r"`(msslab-(?:train|eval|separate|compare|search)\b[^`]*)`", text):
        number = text.count("\n", 0, match.start()) + 1
        try:
            yield number, shlex.split(fill(match.group(1).replace("\n", " ")))
        except ValueError as exc:
            pytest.fail(f"{rel(path)}:{number}: not a shell command ({exc}): {match.group(1)}")


def _mask_fences(path: Path):
    inside = False
    for line in path.read_text().splitlines():
        fence = line.strip().startswith("```")
        yield inside or fence, line
        if fence:
            inside = not inside


# --- msslab commands: compose with Hydra ------------------------------------------------------

PLACEHOLDER = re.compile(r"<[^<>\n]*>")
WHOLE_PLACEHOLDER = re.compile(r"(?<!\S)<[^<>\n]*>(?!\S)")


def fill(text: str) -> str:
    """A placeholder that is a whole argument (``<your parameters>``) goes; one inside an argument becomes x."""
    return PLACEHOLDER.sub("x", WHOLE_PLACEHOLDER.sub("", text))


def placeholders(argv):
    """The placeholder rule of the module docstring (``<...>`` is replaced before the line is split)."""
    return [a for a in argv if a != "..."]


def msslab_command(argv):
    """``(command, args)`` when ``argv`` runs an msslab command, else None."""
    head = argv[0].rsplit("/", 1)[-1]
    if head.startswith("msslab-") and head[len("msslab-"):] in COMMANDS:
        return head[len("msslab-"):], argv[1:]
    if re.fullmatch(r"python[\d.]*", head) and len(argv) > 2 and argv[1] == "-m" and argv[2].startswith("msslab."):
        assert importlib.util.find_spec(argv[2]) is not None, f"python -m {argv[2]}: no such module"
        name = argv[2].rsplit(".", 1)[1]
        return ("eval" if name == "evaluate" else name), argv[3:]
    return None


def compare_argv(args):
    """msslab-compare's own command-line sugar: bare directories and an unquoted baseline."""
    out, dirs = [], []
    for arg in args:
        if arg.startswith("-") or ("=" in arg and not arg.startswith("baseline=")):
            out.append(arg)
        elif arg.startswith("baseline="):
            value = arg.partition("=")[2]
            out.append(arg if value[:1] in "'\"" or value in ("", "null") else "baseline='" + value.replace("'", "\\'") + "'")
        else:
            dirs.append(arg)
    if dirs:
        out.append("dirs=[" + ",".join("'" + d + "'" for d in dirs) + "]")
    return out


@lru_cache(maxsize=None)
def compose(config_name: str, overrides: tuple, config_dir: str | None):
    """Compose as the command would, then resolve every interpolation of the job's config.

    Resolving catches what composing alone lets through, e.g. a preset's table looked up by a
    choice (``${matched_hidden_size.${hydra:runtime.choices.model}}``) that has no entry for it.
    Mandatory values left out (``???``) stay unresolved; Hydra's own node is not resolved.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    importlib.import_module("msslab")  # registers msslab's resolvers, as the commands do

    if config_dir:
        overrides = (*overrides, f"hydra.searchpath=[file://{config_dir}]")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    job = cfg.copy()
    with open_dict(job):
        del job["hydra"]
    OmegaConf.to_container(job, resolve=True, throw_on_missing=False)
    return cfg


def is_group(key: str) -> bool:
    """A config group (``model``, ``hydra/launcher``): each of its choices is another file to compose."""
    key = key.lstrip("+~")
    return (CONF / key).is_dir() or key.startswith("hydra/")


def override_sets(overrides, sweep: bool):
    """Lists of overrides to compose: one per value of each sweep (others at their first value)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import IntervalSweep

    parsed = OverridesParser.create().parse_overrides(overrides)
    fixed = [o.input_line for o in parsed if not o.is_sweep_override()]
    sweeps = []
    for o in parsed:
        if not o.is_sweep_override():
            continue
        if not sweep:
            raise AssertionError(f"{o.input_line!r} is a sweep: add -m")
        key = o.input_line.split("=", 1)[0]
        value = o.value()
        values = [str(value.start)] if isinstance(value, IntervalSweep) else list(o.sweep_string_iterator())
        if not is_group(key):  # a plain value composes alike whatever it is: one compose checks the key
            values = values[:1]
        sweeps.append([f"{key}={v}" for v in values])
    if not sweeps:
        return [fixed]
    firsts = [values[0] for values in sweeps]
    return [fixed + firsts[:i] + [v] + firsts[i + 1:] for i, values in enumerate(sweeps) for v in values]


def local_folder(folder: str, files: dict, tmp_root: Path) -> str:
    """The absolute path of a config folder the page writes (into ``tmp_root``) or the repository holds."""
    parts = Path(folder).parts
    written = {p: text for p, text in files.items() if Path(p).parts[:len(parts)] == parts}
    if written:
        for p, text in written.items():
            (tmp_root / p).parent.mkdir(parents=True, exist_ok=True)
            (tmp_root / p).write_text(text)
        return str((tmp_root / folder).resolve())
    if (REPO / folder).is_dir():
        return str((REPO / folder).resolve())
    raise AssertionError(f"{folder}: no such folder, and the page writes none")


def check_msslab(command: str, args, files: dict, tmp_root: Path):
    args = placeholders(args)
    multirun, config_dir, overrides = command == "search", None, []
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("-m", "--multirun"):
            multirun = True
        elif arg in ("--config-dir", "-cd"):
            i += 1
            config_dir = args[i]
        elif arg.startswith("--config-dir="):
            config_dir = arg.partition("=")[2]
        elif arg in PRINT_FLAGS_WITH_VALUE:
            i += 1
        elif arg in PRINT_FLAGS:
            pass
        elif arg.startswith("-"):
            raise AssertionError(f"unknown flag {arg}")
        else:
            overrides.append(arg)
        i += 1
    if command == "compare":
        overrides = compare_argv(overrides)
    if config_dir is not None:
        config_dir = local_folder(config_dir, files, tmp_root)
    overrides = [re.sub(r"file://([^],\s]+)", lambda m: "file://" + local_folder(m.group(1), files, tmp_root), o)
                 if o.startswith("hydra.searchpath=") else o for o in overrides]
    for each in override_sets(overrides, multirun):
        compose(COMMANDS[command], tuple(each), config_dir)


# --- benchmark scripts: their argparse options ------------------------------------------------

class StrictParser(argparse.ArgumentParser):
    """Raises instead of printing usage and exiting, so the message reaches the report."""

    def error(self, message):
        raise AssertionError(message)


@lru_cache(maxsize=None)
def script_parser(script: Path) -> argparse.ArgumentParser:
    """An ArgumentParser rebuilt from the literal parts of the script's ``add_argument`` calls."""
    parser = StrictParser(prog=script.name, allow_abbrev=False)
    builtin_types = {"int": int, "float": float, "str": str}
    for node in ast.walk(ast.parse(script.read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"):
            continue
        names = [a.value for a in node.args if isinstance(a, ast.Constant)]
        kwargs = {}
        for kw in node.keywords:
            if kw.arg in ("nargs", "action") and isinstance(kw.value, ast.Constant):
                kwargs[kw.arg] = kw.value.value
            elif kw.arg == "type" and isinstance(kw.value, ast.Name) and kw.value.id in builtin_types:
                kwargs["type"] = builtin_types[kw.value.id]
            elif kw.arg == "choices":
                try:
                    kwargs["choices"] = ast.literal_eval(kw.value)
                except ValueError:
                    pass
        parser.add_argument(*names, **kwargs)
    return parser


def check_script(args):
    script = next((a for a in args if a.endswith(".py")), None)
    if script is None:
        return
    path = REPO / script
    assert path.is_file(), f"{script}: no such script"
    rest = placeholders(args[args.index(script) + 1:])
    try:
        script_parser(path).parse_args(rest)
    except AssertionError as exc:
        raise AssertionError(f"{script} does not accept {shlex.join(rest)}: {exc}") from None


def check(argv, files, tmp_root):
    """Check one command line; returns a short kind for the count, or None when it is another tool's."""
    argv = list(argv)
    while argv and re.fullmatch(r"[A-Za-z_]\w*=.*", argv[0]):  # VAR=value cmd
        argv.pop(0)
    if argv[:1] == ["sudo"]:  # sudo [-E] cmd: the command is checked
        argv = argv[2:] if argv[1:2] == ["-E"] else argv[1:]
    if not argv:
        return None
    msslab = msslab_command(argv)
    if msslab:
        check_msslab(*msslab, files, tmp_root)
        return "msslab"
    head = argv[0].rsplit("/", 1)[-1]
    if re.fullmatch(r"python[\d.]*", head):
        if len(argv) > 2 and argv[1] == "-m" and argv[2] == "pytest":
            for arg in argv[3:]:
                if arg.startswith("tests/"):
                    assert (REPO / arg.split("::")[0]).exists(), f"{arg}: no such test file"
            return "pytest"
        if len(argv) > 1 and argv[1].endswith(".py"):
            check_script(argv[1:])
            return "script"
        return None
    if head == "bash" and len(argv) > 1:
        assert (REPO / argv[1]).is_file(), f"{argv[1]}: no such file"
        return "bash"
    if re.match(r"(scripts|benchmarks|\.ci)/", argv[0]):  # a script of the repository run by its path
        assert (REPO / argv[0]).is_file(), f"{argv[0]}: no such file"
        return "bash"
    return None


def all_commands():
    for path in DOCS:
        for number, argv, files in shell_commands(path):
            yield path, number, argv, files
        for number, argv in inline_commands(path):
            yield path, number, argv, {}


def test_every_command_in_the_docs_runs_as_written(tmp_path):
    failures, kinds = [], {}
    for path, number, argv, files in all_commands():
        try:
            kind = check(argv, files, tmp_path / f"{path.stem}_{number}")
        except Exception as exc:  # noqa: BLE001 - every failure is reported with its place
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            failures.append(f"{rel(path)}:{number}: {shlex.join(argv)}\n    {type(exc).__name__}: {message}")
            continue
        if kind:
            kinds[kind] = kinds.get(kind, 0) + 1
    assert not failures, f"{len(failures)} command(s) in the docs do not work as written:\n" + "\n".join(failures)
    # the check must have found the docs' commands (a broken extractor would pass vacuously)
    assert kinds.get("msslab", 0) >= 50 and kinds.get("script", 0) >= 10 and kinds.get("bash", 0) >= 2, kinds


def test_every_msslab_import_in_the_docs_python_resolves():
    """``from msslab.x import a, b`` in a fenced ``python`` block names a module and its attributes."""
    failures, count = [], 0
    for path in DOCS:
        for lang, lines in fenced_blocks(path):
            if lang != "python":
                continue
            for number, line in lines:
                match = re.match(r"\s*from (msslab[\w.]*) import (.+)", line)
                if not match:
                    continue
                count += 1
                names = [n.split(" as ")[0].strip() for n in match.group(2).split("#")[0].strip("() ").split(",")]
                try:
                    module = importlib.import_module(match.group(1))
                    missing = [n for n in names if n and not hasattr(module, n)]
                    assert not missing, f"{match.group(1)} has no {missing}"
                except Exception as exc:  # noqa: BLE001
                    failures.append(f"{rel(path)}:{number}: {line.strip()}\n    {type(exc).__name__}: {exc}")
    assert not failures, "imports in the docs that fail:\n" + "\n".join(failures)
    assert count >= 2, count


# --- links ------------------------------------------------------------------------------------

def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set:
    return {slug(line.lstrip("#")) for _, line in prose_lines(path) if re.match(r"#{1,6} ", line)}


def test_every_link_in_the_docs_resolves():
    failures, count = [], 0
    for path in LINKED:
        for number, line in prose_lines(path):
            for target in re.findall(r"\]\(([^)\s]+)\)", line):
                if re.match(r"[a-z]+:", target):
                    continue
                count += 1
                file, _, anchor = target.partition("#")
                resolved = (path.parent / file).resolve() if file else path
                if not resolved.exists():
                    failures.append(f"{rel(path)}:{number}: {target}: no such file")
                elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
                    failures.append(f"{rel(path)}:{number}: {target}: no heading #{anchor} in {rel(resolved)}")
    assert not failures, "broken links:\n" + "\n".join(failures)
    assert count >= 20, count


def test_the_readme_stays_short_and_keeps_the_ci_command():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "bash .ci/run" in readme
    assert (REPO / ".ci" / "run").is_file()


def test_the_check_fails_on_a_renamed_key_or_choice(tmp_path):
    """A doc line with a misspelt key, an unknown choice or an unknown script option is caught."""
    for bad in (["msslab-train", "model.hiden_size=3"], ["msslab-train", "-m", "model=lstm,grux"],
                ["msslab-eval", "ckpt=x", "separation.wiener_exponant=1"],
                ["msslab-train", "experiment=ablation_rnn", "model=umx"],  # no matched width: fails on resolving
                ["python", "benchmarks/bench_peer.py", "--budget-minute", "20"], ["bash", "scripts/nope.sh"]):
        with pytest.raises(Exception):
            check(bad, {}, tmp_path)
    assert check(["msslab-train", "-m", "model=lstm,gru", "seed=1,2"], {}, tmp_path) == "msslab"
