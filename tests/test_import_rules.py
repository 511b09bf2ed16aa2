"""The import rules of docs/ARCHITECTURE.md ("Packages and what each may import") as data, checked
against every import of every module in qrec_tf/, pipelines/ and serving/ (read with ast, those
inside functions included: a lazy import is still a dependency).

When the table changes, change RULES with it (and the other way round)."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("qrec_tf", "pipelines", "serving")
PROJECT = (*PACKAGES, "benchmarks", "tests")

# What the standard library alone needs: the three dependency-free modules.
DEPENDENCY_FREE = ("qrec_tf.layout", "qrec_tf.model_layout", "qrec_tf.version_names",
                   "qrec_tf.export_staging")
BASE = ("qrec_tf.config", "qrec_tf.losses", "qrec_tf.metrics", "qrec_tf.optimizers")
DATA = ("qrec_tf.data", "qrec_tf.positives", "qrec_tf.data_dir")
# What a CLI-level module (train, evaluate, export, augment, ...) may import: "the modules
# above", models only through the registry.
ABOVE_CLIS = ("qrec_tf.schema", *DEPENDENCY_FREE, *BASE, "qrec_tf.saved_config",
              "qrec_tf.layers", *DATA, "qrec_tf.models.registry")

# importer (a module, or a package and everything in it) -> what it may import from the
# project (a module, or a package and everything in it). The longest matching importer wins;
# the keys in EXACT are a package's __init__ alone.
EXACT = ("qrec_tf", "serving")
RULES: dict[str, tuple[str, ...]] = {
    "qrec_tf": (),                                  # the package's __init__
    "qrec_tf.schema": ("qrec_tf.layout",),
    **{name: () for name in DEPENDENCY_FREE},
    **{name: () for name in BASE},
    "qrec_tf.saved_config": ("qrec_tf.config",),   # a model directory's config.yaml, old or new
    "qrec_tf.layers": ("qrec_tf.layers",),
    "qrec_tf.layers.id_lookup": ("qrec_tf.layers", "qrec_tf.schema"),  # vocabulary files
    "qrec_tf.data": ("qrec_tf.schema", "qrec_tf.layout"),
    "qrec_tf.positives": ("qrec_tf.schema", "qrec_tf.layout", "qrec_tf.data"),
    "qrec_tf.data_dir": ("qrec_tf.schema", "qrec_tf.layout", "qrec_tf.data", "qrec_tf.positives"),
    "qrec_tf.models": ("qrec_tf.models", "qrec_tf.layers", "qrec_tf.schema", "qrec_tf.layout",
                       "qrec_tf.config", "qrec_tf.losses", *DATA,
                       "qrec_tf.model_layout",      # registry.load_trained_model
                       "qrec_tf.saved_config",
                       "qrec_tf.distribute_keras"),  # the Keras workarounds CTRModel inherits
    # Serving's candidate scoring and its XLA buckets (export writes it out).
    "qrec_tf.candidate_scoring": ("qrec_tf.schema", "qrec_tf.layers"),
    # The Keras 3 workarounds for several replicas: the strategy is read inside a method.
    "qrec_tf.distribute_keras": (),
    "qrec_tf.distribute": (*ABOVE_CLIS,),
    "qrec_tf.warm_start": (*ABOVE_CLIS, "qrec_tf.models.base"),   # CTRModel, Vocabularies
    "qrec_tf.train": (*ABOVE_CLIS, "qrec_tf.distribute", "qrec_tf.warm_start"),
    "qrec_tf.evaluate": (*ABOVE_CLIS,),
    # export: evaluate.load_trained_model, train's finite-weights check, CTRModel (the model it
    # exports) and the candidate scoring it writes out.
    "qrec_tf.export": (*ABOVE_CLIS, "qrec_tf.evaluate", "qrec_tf.train", "qrec_tf.models.base",
                       "qrec_tf.candidate_scoring"),
    "qrec_tf.compare": (*ABOVE_CLIS, "qrec_tf.evaluate", "qrec_tf.export"),
    "qrec_tf.tune": (*ABOVE_CLIS, "qrec_tf.train"),
    "qrec_tf.augment": (*ABOVE_CLIS, "qrec_tf.augment"),
    "qrec_tf.demo": ("qrec_tf", "pipelines", "serving"),  # anything in the project
    "qrec_tf.testing": ("qrec_tf.schema", "qrec_tf.models.base"),
    "pipelines": ("pipelines", "qrec_tf.schema", "qrec_tf.layout"),  # Beam workers: no models
    "serving.local_server": ("serving.local_server", "qrec_tf.version_names"),
    "serving.rollout": ("qrec_tf.version_names",),
    "serving": (),                                  # the package's __init__
    "serving.client": ("qrec_tf.schema", "qrec_tf.export"),  # the signature names
}
# Allowed only inside a function (a helper that only some commands run).
INSIDE_FUNCTIONS: dict[str, tuple[str, ...]] = {
    "serving.client": ("qrec_tf.data",),           # the --data helper
    "qrec_tf.distribute_keras": ("qrec_tf.distribute",),   # in_multi_worker_mode
}
# Known violations, each to be removed by the change named beside it.
ALLOWED_FOR_NOW: set[tuple[str, str]] = set()


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, pathlib.Path]:
    return {module_name(path): path for package in PACKAGES
            for path in sorted((ROOT / package).rglob("*.py"))}


MODULES = project_modules()


def is_module(name: str) -> bool:
    path = ROOT.joinpath(*name.split("."))
    return name in MODULES or path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a `from ... import` names (relative imports resolved)."""
    if not node.level:
        return node.module or ""
    package = importer.split(".")
    is_package = MODULES.get(importer, pathlib.Path()).name == "__init__.py"
    base = package[:len(package) - node.level + (1 if is_package else 0)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(importer: str, source: str) -> list[tuple[str, bool]]:
    """(imported project module, inside a function) for every import in `source`: `from a.b
    import c` imports a.b.c when that is a module of the project, else a.b."""
    tree = ast.parse(source)
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                       ast.Lambda))
            if isinstance(child, ast.Import):
                found.extend((alias.name, in_function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                module = resolve(importer, child)
                for alias in child.names:
                    target = f"{module}.{alias.name}"
                    found.append((target if is_module(target) else module, in_function))
            visit(child, nested)

    visit(tree, False)
    return [(name, inside) for name, inside in found if name.split(".")[0] in PROJECT]


def covers(prefix: str, module: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def rule_of(module: str) -> str | None:
    matching = [key for key in RULES
                if (key == module if key in EXACT else covers(key, module))]
    return max(matching, key=len) if matching else None


def violations(importer: str, source: str) -> list[str]:
    rule = rule_of(importer)
    if rule is None:
        return [f"{importer} has no rule: add it to the table in docs/ARCHITECTURE.md and RULES"]
    allowed = RULES[rule]
    lazy = INSIDE_FUNCTIONS.get(rule, ())
    out = []
    for target, inside in imports(importer, source):
        if any(covers(prefix, target) for prefix in allowed):
            continue
        if inside and any(covers(prefix, target) for prefix in lazy):
            continue
        if (importer, target) in ALLOWED_FOR_NOW:
            continue
        out.append(f"{importer} imports {target}{' (inside a function)' if inside else ''}")
    return out


def test_every_import_follows_the_table():
    found = [v for name, path in MODULES.items() for v in violations(name, path.read_text())]
    assert not found, "\n".join(found)


def test_the_allowed_violations_still_exist():
    """An entry of ALLOWED_FOR_NOW whose import is gone must go too."""
    present = {(name, target) for name, path in MODULES.items()
               for target, _ in imports(name, path.read_text())}
    assert ALLOWED_FOR_NOW <= present, ALLOWED_FOR_NOW - present


@pytest.mark.parametrize("importer, source, expected", [
    # the three imports issue 34 found, as they were
    ("pipelines.build_tfrecords",
     "def augment_outputs():\n    from qrec_tf import augment, positives\n",
     ["pipelines.build_tfrecords imports qrec_tf.augment (inside a function)",
      "pipelines.build_tfrecords imports qrec_tf.positives (inside a function)"]),
    ("qrec_tf.augment.grouping",
     "def f():\n    from qrec_tf.evaluate import load_trained_model\n"
     "    from qrec_tf.export import resolve_data_dir\n",
     ["qrec_tf.augment.grouping imports qrec_tf.evaluate (inside a function)",
      "qrec_tf.augment.grouping imports qrec_tf.export (inside a function)"]),
    ("qrec_tf.layers.dice", "import qrec_tf.models.base\n",
     ["qrec_tf.layers.dice imports qrec_tf.models.base"]),
    ("qrec_tf.data", "from qrec_tf.models import registry\n",
     ["qrec_tf.data imports qrec_tf.models.registry"]),
    ("qrec_tf.train", "from qrec_tf.models.queryrec import QueryRecModel\n",
     ["qrec_tf.train imports qrec_tf.models.queryrec"]),
    ("serving.client", "from qrec_tf import data\n", ["serving.client imports qrec_tf.data"]),
    ("qrec_tf.schema", "from benchmarks import ablation\n",
     ["qrec_tf.schema imports benchmarks.ablation"]),
    # allowed
    ("serving.client", "def helper():\n    from qrec_tf import data\n", []),
    ("pipelines.kuaisar", "from qrec_tf import layout, schema\nfrom pipelines import x\n", []),
    ("qrec_tf.models.dcn", "from qrec_tf.models.base import CTRModel\n", []),
    ("qrec_tf.augment.stage", "from qrec_tf.models.registry import load_trained_model\n", []),
    ("qrec_tf.demo", "from serving.client import ServingClient\n", []),
    ("qrec_tf.nothing_yet", "import os\n", ["qrec_tf.nothing_yet has no rule: add it to the "
                                             "table in docs/ARCHITECTURE.md and RULES"]),
])
def test_the_checker_finds_violations_by_hand(importer, source, expected):
    assert violations(importer, source) == expected


def test_every_module_of_the_packages_is_read():
    """The modules the test checks: every file (a new package cannot slip by unread)."""
    assert {"qrec_tf.schema", "qrec_tf.layout", "qrec_tf.data_dir", "qrec_tf.models.registry",
            "qrec_tf.augment.grouping", "pipelines.build_tfrecords", "pipelines.synthetic.cli",
            "serving.local_server.server", "serving.client"} <= set(MODULES)
    assert len(MODULES) == sum(1 for package in PACKAGES for _ in (ROOT / package).rglob("*.py"))
