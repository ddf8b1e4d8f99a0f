"""Read where revision files live from alembic.ini, the way Alembic's Config does."""

from __future__ import annotations

import configparser
import os
import re
from dataclasses import dataclass
from pathlib import Path

_SEPARATORS = {"space": " ", "newline": "\n", "os": os.pathsep, ":": ":", ";": ";"}
_LEGACY_SPLIT = re.compile(r", *|(?: +)")
_USED_KEYS = (
    "script_location",
    "version_locations",
    "path_separator",
    "version_path_separator",
    "recursive_version_locations",
    "sourceless",
)


class ScriptLocationError(Exception):
    """The script directory or its alembic.ini cannot be read at all."""


@dataclass(frozen=True)
class ScriptSettings:
    """Where a project's revision files live, read from alembic.ini like Alembic does."""

    script_location: Path
    version_locations: tuple[Path, ...]
    recursive: bool = False
    sourceless: bool = False
    problems: tuple[str, ...] = ()


def read_settings(
    script_location: Path | None = None, *, alembic_ini: Path | None = None
) -> ScriptSettings:
    """Return where revision files live, from alembic.ini's [alembic] section if given."""
    # Relative paths in the ini are taken from its folder; Alembic takes them from the
    # working directory, which is that folder when it is run the usual way.
    problems: list[str] = []
    options: dict[str, str] = {}
    base = Path.cwd()
    if alembic_ini is not None:
        ini = Path(alembic_ini).absolute()
        base = ini.parent
        parser = configparser.ConfigParser({"here": base.as_posix()})
        try:
            with ini.open(encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error, UnicodeDecodeError) as exc:
            raise ScriptLocationError(f"cannot read {ini}: {exc}") from exc
        if parser.has_section("alembic"):
            # Only the keys we use are interpolated, as Alembic does: a `%` elsewhere (say in
            # sqlalchemy.url's password) is no concern of ours.
            try:
                options = {
                    key: parser.get("alembic", key)
                    for key in _USED_KEYS
                    if parser.has_option("alembic", key)
                }
            except configparser.Error as exc:
                raise ScriptLocationError(f"cannot read {ini}: {exc}") from exc
        else:
            problems.append(f"{ini} has no [alembic] section")
    if script_location is None:
        if "script_location" not in options:
            raise ScriptLocationError("no script_location given and none in alembic.ini")
        script = _location(options["script_location"], base, problems)
    else:
        script = Path(script_location).absolute()
    if not script.is_dir():
        raise ScriptLocationError(f"script location {script} is not a directory")

    version_locations = _version_locations(options, base, problems)
    if version_locations is None:
        locations: tuple[Path, ...] = ((script / "versions").absolute(),)
    else:
        locations = tuple(_location(v, base, problems) for v in version_locations if v)
    return ScriptSettings(
        script_location=script,
        version_locations=locations,
        recursive=options.get("recursive_version_locations") == "true",
        sourceless=options.get("sourceless") == "true",
        problems=tuple(problems),
    )


def _location(value: str, base: Path, problems: list[str]) -> Path:
    if not os.path.isabs(value) and ":" in value:
        problems.append(
            f"location {value!r} is a package resource; only folders can be read without"
            " importing the package"
        )
    return (base / value).absolute()


def _version_locations(
    options: dict[str, str], base: Path, problems: list[str]
) -> list[str] | None:
    """Split version_locations the way Config.get_version_locations_list does."""
    raw = options.get("version_locations")
    if not raw:
        return None
    for name in ("path_separator", "version_path_separator"):
        if name in options:
            separator = _SEPARATORS.get(options[name])
            if separator is None:
                problems.append(
                    f"{options[name]!r} is not a valid value for {name}; expected"
                    " 'space', 'newline', 'os', ':', ';'"
                )
                return [raw.strip()]
            return [part.strip() for part in raw.split(separator) if part]
    return _LEGACY_SPLIT.split(raw)
