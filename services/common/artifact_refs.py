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


class ArtifactNotFound(LookupError):
    """No artifact with this id (never stored, or expired)."""


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
