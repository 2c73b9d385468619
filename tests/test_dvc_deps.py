"""dvc.yaml lists, for each stage, exactly the catdog modules its command imports, so `dvc repro` reruns what changed.

The imports are found statically: from the stage's `catdog <command>` to that command's function in cli.py
(with cli.py's module-level code, its callback and `main`, which run for every command), then through every
`import` in each catdog module reached, including imports inside functions (a lazy `import catdog.labeling.ray_engine`
runs for some options only, but then it shapes the output too). Stages that import a library whose version
can change their outputs (Pillow, NumPy, TensorFlow, LiteRT, scikit-learn, ...) also list requirements.lock.

When this test fails after a module was added, moved or imported somewhere new, its message names each
stage's missing and surplus deps: put exactly those into dvc.yaml.
"""

from __future__ import annotations

import ast
import json
import shlex
import sys
from functools import cache
from pathlib import Path

import yaml

from conftest import REPO, make_project, run

PACKAGE = "catdog"
CLI = REPO / PACKAGE / "cli.py"
LOCK = "requirements.lock"
# Third-party libraries that only parse the command line and params or draw progress: a new version of them
# cannot change a stage's outputs, so a stage that imports nothing else need not rerun when the lock changes.
PLUMBING = {"typer", "click", "rich", "pydantic", "pydantic_core", "yaml"}


# --- the static import walk -----------------------------------------------------------------------------------------


def module_file(name: str) -> Path | None:
    """The source file of catdog module `name` ("catdog.fsutil"), or None if there is none."""
    base = REPO.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _package_of(path: Path) -> str:
    """The package a source file belongs to: the one its relative imports start from."""
    return ".".join(path.relative_to(REPO).parts[:-1])


def _with_parents(name: str) -> set[str]:
    """`catdog.a.b` imports the packages `catdog` and `catdog.a` first."""
    parts = name.split(".")
    return {".".join(parts[: i + 1]) for i in range(len(parts))}


def imports_in(nodes: list[ast.AST], path: Path) -> tuple[set[str], set[str]]:
    """The catdog modules and the other top-level modules that the `import` statements anywhere in `nodes` name."""
    ours: set[str] = set()
    others: set[str] = set()

    def add(name: str) -> None:
        if name == PACKAGE or name.startswith(f"{PACKAGE}."):
            ours.update(_with_parents(name))
        else:
            others.add(name.split(".")[0])

    for root in nodes:
        for node in ast.walk(root):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: from the package of `path`, `level` dots up
                    package = _package_of(path).split(".")
                    base = ".".join(package[: len(package) - node.level + 1])
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                add(target)
                if target == PACKAGE or target.startswith(f"{PACKAGE}."):
                    for alias in node.names:  # `from catdog import fsutil` imports the module catdog.fsutil
                        if module_file(f"{target}.{alias.name}") is not None:
                            add(f"{target}.{alias.name}")
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, (ast.Attribute, ast.Name))
                and (node.func.attr if isinstance(node.func, ast.Attribute) else node.func.id) == "import_module"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
            ):
                add(node.args[0].value)
    others -= {"__future__"}
    return ours, others


@cache
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def command_functions() -> dict[str, ast.FunctionDef]:
    """cli.py's typer commands by command name: `@app.command("name")`, or the function name with - for _."""
    commands = {}
    for node in _parsed(CLI).body:
        if not isinstance(node, ast.FunctionDef):
            continue
        for deco in node.decorator_list:
            if isinstance(deco, ast.Call) and isinstance(deco.func, ast.Attribute) and deco.func.attr == "command":
                named = [a.value for a in deco.args[:1] if isinstance(a, ast.Constant)]
                named += [k.value.value for k in deco.keywords if k.arg == "name" and isinstance(k.value, ast.Constant)]
                commands[named[0] if named else node.name.replace("_", "-")] = node
    return commands


def cli_nodes_for(command: str) -> list[ast.AST]:
    """The parts of cli.py that run for `command`: module-level code, the callback, main, the command's function,
    and the module-level functions they call."""
    tree = _parsed(CLI)
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    commands = command_functions()
    if command not in commands:
        raise AssertionError(f"dvc.yaml runs `catdog {command}`, which cli.py does not define (commands: {sorted(commands)})")
    always = [n for n in functions.values() if any(
        isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "callback" for d in n.decorator_list
    )]
    queue = [commands[command], *always, *([functions["main"]] if "main" in functions else [])]
    seen: dict[str, ast.AST] = {}
    while queue:
        function = queue.pop()
        if function.name in seen:
            continue
        seen[function.name] = function
        called = {n.id for n in ast.walk(function) if isinstance(n, ast.Name)}
        queue += [functions[name] for name in called if name in functions and functions[name] not in commands.values()]
    top_level = [n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    # Decorators run at import too (typer's app.command); they import nothing, but they are module-level code.
    return top_level + list(seen.values())


def closure(command: str) -> tuple[set[Path], set[str]]:
    """Every catdog source file `catdog <command>` may import, and every other top-level module they import."""
    files = {CLI}
    modules, others = imports_in(cli_nodes_for(command), CLI)
    modules.add(PACKAGE)
    done = {f"{PACKAGE}.cli"}  # only the parts of cli.py that run for this command, walked above
    while pending := modules - done:
        name = pending.pop()
        done.add(name)
        path = module_file(name)
        if path is None:  # a name inside a module, not a module; or a module not written yet
            continue
        files.add(path)
        more, libs = imports_in([_parsed(path)], path)
        modules |= more
        others |= libs
    return files, others - set(sys.stdlib_module_names)


# --- dvc.yaml --------------------------------------------------------------------------------------------------------


def stages() -> dict[str, dict]:
    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))
    return {name: stage.get("do", stage) for name, stage in pipeline["stages"].items()}


def command_of(stage: str, spec: dict) -> str:
    """The catdog command a stage runs: `catdog <command> ...` (global options before it are skipped)."""
    cmds = spec["cmd"] if isinstance(spec["cmd"], list) else [spec["cmd"]]
    assert len(cmds) == 1, f"stage {stage!r} runs {len(cmds)} commands; each stage runs one `catdog <command>`"
    words = shlex.split(cmds[0])
    assert words and words[0] == PACKAGE, f"stage {stage!r} runs {words[:1]}, not `catdog <command>`: {cmds[0]!r}"
    return next(w for w in words[1:] if not w.startswith("-"))


def expected_deps(spec_stage: str, spec: dict) -> set[str]:
    files, libs = closure(command_of(spec_stage, spec))
    deps = {p.relative_to(REPO).as_posix() for p in files}
    if libs - PLUMBING:
        deps.add(LOCK)
    return deps


def listed_code_deps(spec: dict) -> set[str]:
    """The stage's deps that are catdog source files or the lock file."""
    deps = {d if isinstance(d, str) else next(iter(d)) for d in spec.get("deps", [])}
    return {d for d in deps if d == LOCK or (d.startswith(f"{PACKAGE}/") and d.endswith(".py"))}


# --- tests -----------------------------------------------------------------------------------------------------------


def test_every_stage_lists_exactly_the_catdog_modules_its_command_imports():
    problems = []
    for name, spec in stages().items():
        expected, listed = expected_deps(name, spec), listed_code_deps(spec)
        for dep in sorted(expected - listed):
            why = "its command's libraries change its outputs" if dep == LOCK else "imported by its command"
            problems.append(f"stage {name!r} misses dep {dep} ({why})")
        for dep in sorted(listed - expected):
            if dep == LOCK:
                why = "its command imports no library that changes its outputs"
            elif not (REPO / dep).exists():
                why = "no such file"
            else:
                why = "its command does not import it"
            problems.append(f"stage {name!r} lists dep {dep}, but {why}")
    assert not problems, "dvc.yaml deps are out of date:\n" + "\n".join(problems)


def test_import_walk_follows_lazy_and_transitive_imports():
    """The walk itself: it must see imports inside functions and through other modules, or the test above is hollow."""
    train_files, train_libs = closure("train")
    train = {p.name for p in train_files}
    # cli.train imports catdog.training.train inside the function; train imports split; everything reaches fsutil.
    assert {"__init__.py", "cli.py", "errors.py", "train.py", "split.py", "fsutil.py", "params.py"} <= train
    assert "tensorflow" in train_libs and "fetch.py" not in train
    fetch_files, fetch_libs = closure("fetch")
    assert "train.py" not in {p.name for p in fetch_files} and not fetch_libs - PLUMBING
    ours, _ = imports_in([ast.parse("def f():\n    from catdog import fsutil\n    from .images import load_image\n")], CLI)
    assert {"catdog", "catdog.fsutil", "catdog.images"} <= ours


def test_editing_a_module_makes_dvc_status_report_the_stages_that_import_it(tmp_path):
    """End to end with DVC itself: record the pipeline as if it had run, edit fsutil.py, ask `dvc status`."""
    project = make_project(tmp_path / "project", {})
    for spec in stages().values():
        for out in spec.get("outs", []) + spec.get("metrics", []) + spec.get("plots", []):
            path = project / (out if isinstance(out, str) else next(iter(out)))
            if not path.exists():  # a stand-in: DVC hashes what is there, a file or a folder alike
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(f"stand-in for {path.name}\n")
    run(["dvc", "commit", "--force", "--quiet"], cwd=project, timeout=120)
    assert json.loads(run(["dvc", "status", "--json"], cwd=project, timeout=120).stdout) == {}

    with open(project / PACKAGE / "fsutil.py", "a", encoding="utf-8") as fh:
        fh.write("# an edit\n")
    changed = json.loads(run(["dvc", "status", "--json"], cwd=project, timeout=120).stdout)
    importing = {name for name, spec in stages().items() if f"{PACKAGE}/fsutil.py" in expected_deps(name, spec)}
    assert importing, "fsutil.py is imported by some stage"
    assert set(changed) == importing
    for name in importing:
        assert {"changed deps": {f"{PACKAGE}/fsutil.py": "modified"}} in changed[name], changed[name]
