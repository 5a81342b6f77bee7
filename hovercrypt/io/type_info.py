"""``type_info.json``: names and colours of the crypt types.

Format: ``{"0": ["background", [0, 0, 0]], "1": ["benign", [R, G, B]], ...}``.
Keys are consecutive type ids from 0 (background). Validated on load because
a typo here silently mislabels every exported crypt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from hovercrypt.errors import InputError

#: counts.csv columns besides the per-type counts (tile and wsi): a type of the same name would
#: overwrite one of them.
RESERVED_NAMES = frozenset(
    {"image", "slide", "untyped", "total", "status", "tissue_area_mm2", "crypts_per_mm2"}
)


@dataclass(frozen=True)
class TypeInfo:
    names: tuple[str, ...]  # index = type id
    colors: tuple[tuple[int, int, int], ...]

    def __len__(self) -> int:
        return len(self.names)

    def name(self, type_id: int) -> str:
        return self.names[type_id] if 0 <= type_id < len(self.names) else f"type{type_id}"

    def color(self, type_id: int) -> tuple[int, int, int]:
        return self.colors[type_id] if 0 <= type_id < len(self.colors) else (255, 255, 0)

    def to_json_dict(self) -> dict[str, list]:
        return {str(i): [n, list(c)] for i, (n, c) in enumerate(zip(self.names, self.colors))}

    @classmethod
    def default(cls, nr_types: int) -> TypeInfo:
        """Fallback when no file is given: background + generic crypt types."""
        if nr_types <= 2:
            return cls(("background", "crypt"), ((0, 0, 0), (0, 200, 0)))
        palette = [(0, 200, 0), (230, 0, 0), (0, 0, 255), (255, 160, 0), (160, 0, 200), (0, 200, 200)]
        names = ["background"] + [f"type{i}" for i in range(1, nr_types)]
        colors = [(0, 0, 0)] + [palette[(i - 1) % len(palette)] for i in range(1, nr_types)]
        return cls(tuple(names), tuple(colors))


def parse_type_info(data: object, source: str = "<type_info>") -> TypeInfo:
    if not isinstance(data, dict) or not data:
        raise InputError(f"{source}: must be a non-empty JSON object mapping type ids to [name, [R, G, B]]")
    try:
        ids = sorted(int(k) for k in data)
    except (TypeError, ValueError) as e:
        bad = [k for k in data if not str(k).lstrip("-").isdigit()]
        raise InputError(f"{source}: keys must be integer type ids, got {bad}") from e
    # "01" or " 1" parse as 1 but would not be found under "1": demand the plain spelling
    odd = [k for k in data if isinstance(k, bool) or str(k) != str(int(k))]
    if odd:
        raise InputError(
            f"{source}: type ids must be written as plain integers like \"1\", got {odd}"
            f" (write {[str(int(k)) for k in odd]})"
        )
    if ids != list(range(len(ids))):
        raise InputError(f"{source}: type ids must be consecutive from 0 (0 = background), got {ids}")
    names, colors = [], []
    for i in ids:
        entry = data[str(i)] if str(i) in data else data[i]  # type: ignore[index]
        if not (isinstance(entry, list | tuple) and len(entry) == 2 and isinstance(entry[0], str)):
            raise InputError(f"{source}: entry {i!r} must be [name, [R, G, B]], got {entry!r}")
        name, color = entry
        if not (
            isinstance(color, list | tuple)
            and len(color) == 3
            and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in color)
        ):
            raise InputError(f"{source}: colour of type {i} ({name!r}) must be [R, G, B] ints in 0..255")
        names.append(name)
        colors.append(tuple(color))
    if len(set(names)) != len(names):
        raise InputError(f"{source}: type names must be unique, got {names}")
    clash = [n for n in names[1:] if n in RESERVED_NAMES]
    if clash:
        raise InputError(
            f"{source}: type name(s) {clash} clash with counts.csv columns "
            f"({', '.join(sorted(RESERVED_NAMES))}); rename them"
        )
    return TypeInfo(tuple(names), tuple(colors))  # type: ignore[arg-type]


def load_type_info(path: str | Path) -> TypeInfo:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: type info file not found")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON ({e})") from e
    return parse_type_info(data, str(path))


#: the value of ``Config.type_info`` that means "the file shipped with hovercrypt"
SHIPPED_NAME = "type_info.json"


def shipped_type_info_path() -> Path:
    """``hovercrypt/type_info.json``, package data: found the same way in a checkout, an editable
    and a regular install, whatever the current folder."""
    return Path(str(resources.files("hovercrypt").joinpath(SHIPPED_NAME)))


def type_info_path(explicit: str | Path | None = None, configured: str | Path | None = None) -> Path:
    """The one rule for which ``type_info.json`` is used.

    ``explicit`` (``--type_info_path``) wins, then the config's ``type_info`` unless it is the
    bare default name, then the shipped file. A path that is named but missing is an error:
    a typo must not silently turn the type names into ``type1, type2``.
    """
    if explicit:
        if not Path(explicit).is_file():
            raise InputError(f"{explicit}: type info file (--type_info_path) not found")
        return Path(explicit)
    if configured and str(configured) != SHIPPED_NAME:
        if not Path(configured).is_file():
            raise InputError(f"{configured}: type info file (config type_info) not found")
        return Path(configured)
    return shipped_type_info_path()
