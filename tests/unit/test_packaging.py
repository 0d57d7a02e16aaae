"""What a fresh machine installs from setup.cfg is all that the shipped code, the tests and the
benches import: a module that is only present in a developer's venv would pass here and fail in CI."""
import ast
import configparser
import re
import sys
from importlib.metadata import packages_distributions

from conftest import ROOT

SOURCE_ROOTS = {"werkbund": "werkbund", "simulation": "werkbund.simulation", "platform": "werkbund.platform",
                "local_platform": "werkbund.local_platform", "client": "werkbund.client", "algorithms": "werkbund.algorithms", "dashboard": "werkbund.dashboard",
                "usecases": "werkbund.usecases", "ledger": "werkbund.ledger"}


def _setup_cfg():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    return parser


def _requirement_names(block: str) -> set[str]:
    names = set()
    for line in block.splitlines():
        match = re.match(r"\s*([A-Za-z0-9_.\-]+)", line)
        if match:
            names.add(re.sub(r"[-_.]+", "-", match.group(1)).lower())
    return names


def _declared() -> set[str]:
    cfg = _setup_cfg()
    names = _requirement_names(cfg["options"]["install_requires"])
    for extra in cfg["options.extras_require"].values():
        names |= _requirement_names(extra)
    return names


def _top_level_imports(path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_every_imported_third_party_module_is_a_declared_dependency():
    local = {p.stem for p in (ROOT / "tests").rglob("*.py")} | {p.stem for p in (ROOT / "bench").glob("*.py")}
    local |= {"werkbund", "support"}
    distributions = packages_distributions()
    declared = _declared()
    missing = {}
    files = [p for folder in (*SOURCE_ROOTS, "tests", "bench") for p in (ROOT / folder).rglob("*.py")]
    for path in files:
        for module in _top_level_imports(path) - set(sys.stdlib_module_names) - local:
            owners = {re.sub(r"[-_.]+", "-", d).lower() for d in distributions.get(module, [])}
            if not owners & declared:
                missing.setdefault(module, []).append(str(path.relative_to(ROOT)))
    assert missing == {}, f"imported but not declared in setup.cfg: {missing}"


def test_every_package_folder_is_listed_in_setup_cfg():
    listed = set(_setup_cfg()["options"]["packages"].split())
    folders = set()
    for folder, package in SOURCE_ROOTS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            relative = init.parent.relative_to(ROOT / folder)
            folders.add(".".join([package, *relative.parts]))
    folders |= set(SOURCE_ROOTS.values())
    assert folders - listed == set(), "package folders missing from setup.cfg"
