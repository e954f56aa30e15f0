"""The training command's front: `--help` lists the config files and their variants,
`--config=FILE:list` describes one file's variants, and a mistake in `--config` or
`--config.FIELD=VALUE` is refused in one line (naming the closest field) before anything runs."""

from __future__ import annotations

import os
import pathlib
import re

from megathread_jax import config_base
from megathread_jax.errors import ConfigurationError

PROGRAM = "python -m megathread_jax.main"
LIST_VARIANTS = ("list", "help")  # --config=FILE:list describes FILE's variants
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)(?:=.*)?$")
_CONFIG = re.compile(r"^--?config(?:=(.*))?$")


def configs_directory() -> pathlib.Path:
    """The checkout's configs/ (beside the package, as an editable install has it), else ./configs."""
    beside_package = pathlib.Path(__file__).resolve().parents[1] / "configs"
    return beside_package if beside_package.is_dir() else pathlib.Path("configs")


def _shown_path(path: pathlib.Path) -> str:
    try:
        return os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return str(path)


def variant_rows(path: pathlib.Path) -> list[tuple[str, str]]:
    """(FILE:VARIANT, what it runs) for each variant of the config file at `path`."""
    module = config_base.config_module(path)
    variants = getattr(module, "VARIANTS", {})
    if not variants:
        return [(_shown_path(path), "(no variants)")]
    default = getattr(module, "DEFAULT_VARIANT", "")
    return [
        (f"{_shown_path(path)}:{name}", f"{description}{' (the default)' if name == default else ''}")
        for name, description in variants.items()
    ]


def _aligned(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(left) for left, _ in rows)
    return [f"  {left:<{width}}  {right}" for left, right in rows]


def usage() -> str:
    """What `--help` prints."""
    files = sorted(configs_directory().glob("*.py"))
    rows = [row for path in files for row in variant_rows(path)]
    listing = _aligned(rows) if rows else [f"  (no config files in {_shown_path(configs_directory())})"]
    return "\n".join(
        [
            f"usage: {PROGRAM} --config=FILE[:VARIANT] [--workdir=DIR] [--config.FIELD=VALUE ...] [--print_config]",
            "",
            "Trains and evaluates a config; rerunning the same command in the same workdir resumes it.",
            "",
            "configs (FILE:VARIANT):",
            *listing,
            "",
            "flags:",
            "  --config=FILE[:VARIANT]  the experiment; FILE:list describes FILE's variants",
            "  --workdir=DIR            checkpoints, metrics, curves and final weights (default ./workdir)",
            "  --config.FIELD=VALUE     override a field, e.g. --config.batch_size=128",
            "  --print_config           print every field of the resolved config with its value and meaning, then exit",
        ]
    )


def check_config_arguments(args: list[str]) -> str | None:
    """Loads the config named by `--config` and checks that every `--config.FIELD` is one of its
    fields. Returns the text to print instead of training (the variants for FILE:list), else None.
    Raises `ConfigurationError` for a missing or unknown file, variant or field."""
    spec = None
    for i, arg in enumerate(args):
        match = _CONFIG.match(arg)
        if match:
            spec = match.group(1) if match.group(1) is not None else (args[i + 1] if i + 1 < len(args) else "")
    if not spec:
        raise ConfigurationError(
            f"--config is required, e.g. --config={_shown_path(configs_directory() / 'mobilevit.py')}:demo; "
            f"{PROGRAM} --help lists the configs"
        )
    path, _, variant = spec.partition(":")
    if variant in LIST_VARIANTS:
        return "\n".join([f"variants of {path}:", *_aligned(variant_rows(pathlib.Path(path)))])
    config = config_base.load_config(spec)
    for arg in args:
        match = _OVERRIDE.match(arg)
        if match:
            config_base.check_field(config, match.group(1))
    return None
