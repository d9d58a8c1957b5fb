"""Fixed, zero-padded names of tiles, rounds and bits (docs/architecture.md, "The experiment on disk").

Tiles and rounds count from 0, bits from 1 like the codebook's columns.
"""

from __future__ import annotations

import re

from ..errors import InputError

TILE_PATTERN = r"tile\d{4}"
ROUND_PATTERN = r"round\d{4}"
BIT_PATTERN = r"bit\d{3}"


def tile_name(tile: int) -> str:
    """``tile0003`` for tile 3."""
    return f"tile{int(tile):04d}"


def round_name(round_index: int) -> str:
    """``round0002`` for round 2."""
    return f"round{int(round_index):04d}"


def bit_name(bit: int) -> str:
    """``bit007`` for bit 7 (bits count from 1)."""
    return f"bit{int(bit):03d}"


def codebook_bit_column(bit: int) -> str:
    """``bit07``: the codebook's two-digit column name of bit 7."""
    return f"bit{int(bit):02d}"


def index_of(name: str, kind: str) -> int:
    """Inverse of the ``*_name`` functions: ``index_of("tile0003", "tile") == 3``."""
    pattern = {"tile": TILE_PATTERN, "round": ROUND_PATTERN, "bit": BIT_PATTERN}[kind]
    if not re.fullmatch(pattern, name):
        raise InputError(f"{name!r} is not a {kind} name (expected the pattern {pattern})")
    return int(name[len(kind):])
