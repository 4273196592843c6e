"""The package's layer table: the one place that says which module may import which.

A module may import from its own layer and from layers below it, never above; within a
layer, packages do not import each other (``masks`` and ``data`` are siblings). The table
is checked by ``tests/unit/test_layers.py``, which walks every import (function-level and
``if TYPE_CHECKING:`` included) and fails on an upward edge or an import circle.

Imports of maskcrypt modules sit at module level, except in the front door (``cli``): it
imports each command's stage when the command runs, so ``maskcrypt --help`` and the jobs'
environment check start without loading numpy, torch or Ray.
"""

from __future__ import annotations

#: Lowest first. Each entry: the layer's name and the packages or modules in it (dotted, under ``maskcrypt``).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", ("core",)),  # errors, atomic files, precision, statistics, the run directory
    ("runtime", ("runtime",)),  # Ray cluster start/join, ports, memory sampling
    ("config", ("config",)),  # every setting of a run, the thresholds, RunConfig
    ("conventions", ("masks", "data")),  # masks (polarity, buckets, library) and image sources
    ("models and rules", ("models", "selection")),  # the networks and the predictor; the pure selection rules
    ("evaluation", ("evaluation",)),  # the test set, the scorer actor, the cross product on Ray Data
    ("training and serving", ("train", "serving")),  # Ray Train; Ray Serve
    ("verification", ("verification",)),  # the field's protocol and its stage
    ("reporting", ("reporting",)),  # pictures and report.md
    ("determination", ("determine",)),  # Table 1, the ranking and race, the attackers, the decision
    ("stages", ("prepare", "tune", "capacity", "export", "client")),  # single-module stages and the client's short path
    ("pipeline", ("pipeline",)),  # the whole run, one Run through every stage
    ("front door", ("cli",)),  # the maskcrypt command and the jobs' entry
)

#: Packages allowed to import maskcrypt modules inside functions (see the module docstring).
LAZY_IMPORTERS: tuple[str, ...] = ("cli",)

#: Third-party packages that may be imported inside a function: heavy ones, kept off the start-up paths (the
#: CLI, the predictor that GPU harnesses import without Ray, Ray workers that never need them). Everything
#: else, the standard library included, is imported at module level.
HEAVY_PACKAGES: frozenset[str] = frozenset({
    "torch", "torchvision", "ray", "pandas", "pyarrow", "matplotlib", "fastapi", "starlette", "cv2", "onnx",
    "onnxruntime", "onnxscript", "PIL", "yaml", "numpy", "scipy",
})


def unit_of(module: str) -> str:
    """The table entry (package or top-level module) that ``maskcrypt.<...>`` belongs to; '' for the package root."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def rank(module: str) -> int:
    """The layer index of a dotted module name; -1 for the package root (``maskcrypt``: its version and error)."""
    unit = unit_of(module)
    if unit in ("", "__main__"):
        return -1 if unit == "" else len(LAYERS)
    for i, (_, units) in enumerate(LAYERS):
        if unit in units:
            return i
    raise KeyError(f"{module}: not in the layer table (maskcrypt.core.layers.LAYERS)")
