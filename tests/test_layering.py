"""The package's layering, read from the import statements of every module (static: a lazy
import inside a function counts too).

modeling and losses are plain PyTorch: neither Lightning, Hydra nor our data code; data never
imports modeling, losses, inference, metrics or the Lightning layer; metrics and inference know
only the contracts (`types.py`); the contracts know nothing of ours.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "m2f_lightning"
FRAMEWORKS = ("lightning", "pytorch_lightning", "hydra", "omegaconf")
UPPER_LAYERS = (
    "m2f_lightning.lightning_module",
    "m2f_lightning.cli",
    "m2f_lightning.runs",
    "m2f_lightning.callbacks",
)

# module prefix → (imports it must not make, our modules it may import: None = any)
RULES: dict[str, tuple[tuple[str, ...], tuple[str, ...] | None]] = {
    "m2f_lightning.types": ((*FRAMEWORKS,), ()),
    "m2f_lightning.errors": ((*FRAMEWORKS, "torch"), ()),
    # detectron2's resizing rules, shared by the data pipeline and the official TTA
    "m2f_lightning.resizing": ((*FRAMEWORKS,), ()),
    "m2f_lightning.modeling": (
        (*FRAMEWORKS, "m2f_lightning.data", *UPPER_LAYERS),
        ("m2f_lightning.modeling", "m2f_lightning.types", "m2f_lightning.errors"),
    ),
    "m2f_lightning.losses": (
        (*FRAMEWORKS, "m2f_lightning.data", *UPPER_LAYERS),
        ("m2f_lightning.losses", "m2f_lightning.types", "m2f_lightning.errors"),
    ),
    "m2f_lightning.data": (
        ("hydra", "omegaconf", "m2f_lightning.modeling", "m2f_lightning.losses"),
        (
            "m2f_lightning.data",
            "m2f_lightning.types",
            "m2f_lightning.errors",
            "m2f_lightning.resizing",
        ),
    ),
    "m2f_lightning.metrics": ((*FRAMEWORKS,), ("m2f_lightning.metrics", "m2f_lightning.types")),
    "m2f_lightning.inference": (
        (*FRAMEWORKS,),
        ("m2f_lightning.inference", "m2f_lightning.types", "m2f_lightning.resizing"),
    ),
    # a run's lifecycle sits under the commands: it never imports them
    "m2f_lightning.runs": (("m2f_lightning.cli.main",), None),
    "m2f_lightning.callbacks": (("m2f_lightning.cli.main",), None),
    # what a run writes: framework-free, from the contracts and the catalog only
    "m2f_lightning.outputs": (
        (*FRAMEWORKS, *UPPER_LAYERS, "m2f_lightning.modeling", "m2f_lightning.losses"),
        (
            "m2f_lightning.outputs",
            "m2f_lightning.types",
            "m2f_lightning.errors",
            "m2f_lightning.metrics",
            "m2f_lightning.data.catalog",
            "m2f_lightning.data.io",
        ),
    ),
    # the evaluation report: framework-free (callbacks.ReportWriter drives it during a test)
    "m2f_lightning.outputs.report": (
        (*FRAMEWORKS, "m2f_lightning.data", *UPPER_LAYERS),
        (
            "m2f_lightning.outputs.report",
            "m2f_lightning.types",
            "m2f_lightning.metrics",
            "m2f_lightning.outputs.visualize",
        ),
    ),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Absolute names of everything `path` imports (relative imports resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found.add(target)
            # `from . import x` imports the submodule x
            found |= {f"{target}.{alias.name}" for alias in node.names if not node.module}
    return found


def violations(path: Path) -> list[str]:
    name = module_name(path)
    out = []
    for prefix, (forbidden, allowed_ours) in RULES.items():
        if name != prefix and not name.startswith(prefix + "."):
            continue
        for imported in sorted(imports_of(path)):
            if any(imported == f or imported.startswith(f + ".") for f in forbidden):
                out.append(f"{name} imports {imported}")
            elif (
                allowed_ours is not None
                and imported.startswith("m2f_lightning")
                and not any(imported == a or imported.startswith(a + ".") for a in allowed_ours)
            ):
                out.append(f"{name} imports {imported} (allowed: {allowed_ours})")
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_module_respects_the_layering(path: Path) -> None:
    assert violations(path) == []


def test_the_rules_catch_a_modeling_module_importing_data(tmp_path: Path) -> None:
    fake = PACKAGE / "modeling" / "_layering_probe.py"
    assert not fake.exists()
    fake.write_text("from ..data.catalog import get_metadata\nimport lightning\n")
    try:
        assert violations(fake) == [
            "m2f_lightning.modeling._layering_probe imports lightning",
            "m2f_lightning.modeling._layering_probe imports m2f_lightning.data.catalog",
        ]
    finally:
        fake.unlink()
