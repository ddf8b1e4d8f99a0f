"""What loading a script directory yields."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dashboard.history import Graph


@dataclass(frozen=True)
class LoadedHistory:
    """A project's revision graph with the fingerprint of the files it came from."""

    graph: Graph
    fingerprint: str
    script_location: Path
    version_locations: tuple[Path, ...]
    problems: tuple[str, ...] = field(default=())
    # {real path: sha256} of the bytes each revision file was parsed from; the fingerprint
    # is of stats, so only these tell which bytes the graph really describes.
    file_hashes: dict[str, str] = field(default_factory=dict, compare=False)
    # The application modules whose constants the graph was read with (see constants.py).
    constant_sources: tuple[str, ...] = ()
