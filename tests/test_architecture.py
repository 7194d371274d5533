"""The house's shape, as a test: every import of cairnd (read with `ast`, lazy and
type-only ones included) points down the floors, no modules import each other in a
circle, no folder holds more than 12 modules and no module more than 500 lines; only
the few modules of `git/` that are meant to start git do (SPEC 16: its directories and
its fixed configuration from one place); and the daemon implements the small port the
fleet talks to it through (docs/architecture.md).
"""

from __future__ import annotations

import ast
import inspect
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "daemon" / "cairnd"

# The floors, bottom to top: a module may import its own folder and the floors below.
# Folders on one floor (web, fleet and acp) do not import each other.
FLOORS: list[set[str]] = [
    {"cairnd", "errors", "ids", "journal", "inotify"},  # the package root's modules, shared by all
    {"state"},
    {"config"},
    {"git"},
    {"sessionlog"},
    {"checkpoints"},
    {"agent", "agents"},  # agents: the reference agent, a program of its own
    {"spool"},
    {"sessions"},
    {"web", "fleet", "acp"},  # the doors beside the spool: people's browsers, other hosts, editors
    {"serve"},
    {"cli"},
    {"__main__"},
]
FLOOR_OF = {name: level for level, names in enumerate(FLOORS) for name in names}
# Circles known and not yet closed, each with why; a new one fails the test, and so does
# one of these once it is gone (then delete it here).
KNOWN_CIRCLES: list[list[str]] = []
MAX_MODULES_PER_FOLDER = 12
MAX_LINES_PER_MODULE = 500
# The modules that start a git process themselves (cairnd.git.run's docstring says why
# each); the reference agent is an agent, whose git is the agent's own.
STARTS_GIT = {"cairnd.git.run", "cairnd.git.vault", "cairnd.git.places", "cairnd.git.objects",
              "cairnd.agents.reference"}
SPAWNERS = {"run", "Popen", "call", "check_call", "check_output", "create_subprocess_exec", "execvp", "execv",
            "spawnvp", "run_process", "open_process"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES: dict[str, Path] = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    """The folder a module lives in: `sessions` for cairnd.sessions.forker, the module's
    own name for one at the package root (cairnd.errors -> errors), `cairnd` for the root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cairnd"


def imports_of(path: Path) -> set[str]:
    """The cairnd modules a module imports, wherever the import statement stands."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and (
                node.module == "cairnd" or node.module.startswith("cairnd.")):
            for alias in node.names:
                whole = f"{node.module}.{alias.name}"
                found.add(whole if whole in MODULES else node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.split(".")[0] == "cairnd")
    return {name for name in found if name in MODULES}


GRAPH: dict[str, set[str]] = {name: imports_of(path) - {name} for name, path in MODULES.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan): each a circle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = defaultdict(set)
    for source, targets in graph.items():
        folders[room(source)].update(room(t) for t in targets if room(t) != room(source))
    return folders


def wrong_way(graph: dict[str, set[str]]) -> list[str]:
    """Imports that point up a floor, or sideways between the folders of one floor."""
    bad = []
    for source, targets in sorted(graph.items()):
        for target in sorted(targets):
            up, down = room(source), room(target)
            if up != down and FLOOR_OF[down] >= FLOOR_OF[up]:
                bad.append(f"{source} ({up}, floor {FLOOR_OF[up]}) imports {target} ({down}, floor {FLOOR_OF[down]})")
    return bad


def test_every_folder_has_a_floor() -> None:
    assert sorted({room(m) for m in MODULES} - FLOOR_OF.keys()) == []


def test_no_module_imports_itself_back_through_others() -> None:
    assert circles(GRAPH) == KNOWN_CIRCLES


def test_no_folders_import_each_other_in_a_circle() -> None:
    assert circles(folder_graph(GRAPH)) == []


def test_every_import_points_down() -> None:
    assert wrong_way(GRAPH) == []


def test_no_folder_holds_more_than_twelve_modules() -> None:
    counts: dict[str, int] = defaultdict(int)
    for name, path in MODULES.items():
        if path.parent != PACKAGE and path.name != "__init__.py":
            counts[room(name)] += 1
    assert {folder: n for folder, n in counts.items() if n > MAX_MODULES_PER_FOLDER} == {}


def test_no_module_is_over_five_hundred_lines() -> None:
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES_PER_MODULE}
    assert long == {}


def git_starts(source: str) -> int:
    """How many calls in `source` start a process whose program is the literal "git"."""
    count = 0
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call) or not node.args:
            continue
        name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
        first = node.args[0]
        if isinstance(first, (ast.List, ast.Tuple)) and first.elts:
            first = first.elts[0]
        if name in SPAWNERS and isinstance(first, ast.Constant) and first.value == "git":
            count += 1
    return count


def test_only_the_modules_meant_to_start_git_do() -> None:
    starting = {name for name, path in MODULES.items() if git_starts(path.read_text())}
    assert starting <= STARTS_GIT, sorted(starting - STARTS_GIT)


def test_the_daemon_implements_the_fleets_port() -> None:
    from cairnd.fleet.port import DaemonPort
    from cairnd.serve.service import Daemon

    wanted = {name for name in vars(DaemonPort) if not name.startswith("_")} | set(DaemonPort.__annotations__)
    missing = sorted(name for name in wanted if not hasattr(Daemon, name)
                     and name not in inspect.signature(Daemon.__init__).parameters
                     and name not in inspect.getsource(Daemon.__init__))
    assert missing == []


# -- the checks themselves catch what they are meant to ----------------------------------


@pytest.mark.parametrize("source, starts", [
    ('subprocess.run(["git", "status"], cwd=w)', 1),
    ('subprocess.Popen(("git", "cat-file"), env=e)', 1),
    ('await asyncio.create_subprocess_exec("git", "log")', 1),
    ('subprocess.run(["grep", "git"])', 0),
    ('git.run(worktree, ["status"])', 0),
])
def test_a_git_process_started_directly_is_found(source: str, starts: int) -> None:
    assert git_starts("async def f():\n    " + source) == starts


def test_a_circle_is_found() -> None:
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize(("source", "target", "bad"), [
    ("cairnd.git.run", "cairnd.sessions.land", True),     # up
    ("cairnd.fleet.host", "cairnd.serve.service", True),  # up (the old circle's half)
    ("cairnd.web.app", "cairnd.fleet.host", True),        # sideways on one floor
    ("cairnd.sessions.land", "cairnd.git.run", False),    # down
    ("cairnd.git.run", "cairnd.git.files", False),        # within a folder
])
def test_an_import_up_or_sideways_is_found(source: str, target: str, bad: bool) -> None:
    assert bool(wrong_way({source: {target}})) is bad


def counts() -> dict[str, object]:
    """The figures docs/architecture.md's table gives: `python tests/test_architecture.py`."""
    plain = [name for name, path in MODULES.items() if path.name != "__init__.py"]
    per_folder: dict[str, int] = defaultdict(int)
    for name in plain:
        if MODULES[name].parent != PACKAGE:
            per_folder[room(name)] += 1
    return {
        "modules": len(plain),
        "arrows": sum(len(targets) for targets in GRAPH.values()),
        "between folders": sum(1 for source, targets in GRAPH.items() for t in targets if room(source) != room(t)),
        "pairs of folders": sum(len(targets) for targets in folder_graph(GRAPH).values()),
        "imports up": len(wrong_way(GRAPH)),
        "circles": circles(GRAPH) + circles(folder_graph(GRAPH)),
        "per folder": dict(sorted(per_folder.items())),
    }


if __name__ == "__main__":
    for key, value in counts().items():
        print(f"{key}: {value}")
