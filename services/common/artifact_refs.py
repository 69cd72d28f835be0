"""What an artifact is, apart from where it is kept: its kind, media type and a safe name.

Pure: the stage rules use these; `artifacts.py` keeps the files in the NATS object store.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import PurePosixPath

from chorus.v1.messages_pb2 import Kind

_KIND_BY_MAJOR = {"image": Kind.KIND_IMAGE, "audio": Kind.KIND_AUDIO, "video": Kind.KIND_VIDEO}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
# `type/subtype`, ASCII, no parameters: a media type that can be echoed in a header as it is.
MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}/[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")


class ArtifactNotFound(LookupError):
    """No artifact with this id (never stored, or expired)."""


class BadMediaType(ValueError):
    """A media type that is not `type/subtype` (CR/LF, parameters, non-ASCII)."""


def checked_media_type(media_type: str) -> str:
    """`media_type` if it is a plain `type/subtype`, else `BadMediaType`."""
    if not MEDIA_TYPE.fullmatch(media_type):
        raise BadMediaType(f"not a type/subtype media type: {media_type[:80]!r}")
    return media_type.lower()


def media_type_for(name: str) -> str:
    guessed, _ = mimetypes.guess_type(name)
    return guessed or "application/octet-stream"


def kind_for(media_type: str) -> Kind.ValueType:
    major = media_type.split("/", 1)[0]
    if major == "text":
        return Kind.KIND_TEXT
    return _KIND_BY_MAJOR.get(major, Kind.KIND_UNSPECIFIED)


def kind_for_name(name: str) -> Kind.ValueType:
    """The kind of a file name, path or URL, by its extension (a URL's query is ignored)."""
    return kind_for(media_type_for(name.split("?")[0]))


def safe_file_name(name: str) -> str:
    """A base name that cannot escape a directory: `../../etc/passwd` becomes `passwd`."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = _SAFE_NAME.sub("_", base).lstrip(".")
    return cleaned or "file"
