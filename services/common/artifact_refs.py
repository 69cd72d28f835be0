"""What an artifact is, apart from where it is kept: its kind, media type and a safe name.

Pure: the stage rules use these; `artifacts.py` keeps the files in the NATS object store.
"""

from __future__ import annotations

import mimetypes
import re
from pathlib import PurePosixPath

from chorus.v1.messages_pb2 import ArtifactRef, Kind, TaskResult

_KIND_BY_MAJOR = {"image": Kind.KIND_IMAGE, "audio": Kind.KIND_AUDIO, "video": Kind.KIND_VIDEO}
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")
# `type/subtype`, ASCII, no parameters: a media type that can be echoed in a header as it is.
MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}/[A-Za-z0-9][A-Za-z0-9.+_-]{0,63}")


class ArtifactNotFound(LookupError):
    """No artifact with this id (never stored, or expired)."""


class BadMediaType(ValueError):
    """A media type that is not `type/subtype` (CR/LF, parameters, non-ASCII)."""


class BadInline(ValueError):
    """Inline bytes that are not taken: over the size limit, unlike their stated size, or of
    a bad media type. `reason` labels the counter."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


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


def inlined(ref: ArtifactRef, data: bytes, max_bytes: int) -> ArtifactRef:
    """`ref` carrying `data` inline when it is at most `max_bytes` (0: never)."""
    if 0 < len(data) <= max_bytes:
        ref.inline = data
    return ref


def inline_file(ref: ArtifactRef, max_bytes: int) -> tuple[str, Kind.ValueType, bytes]:
    """The name, kind and bytes an inline reference carries, checked as a stored file is: the
    kind follows from the media type, never from what the message says. `BadInline` says why
    it is refused."""
    size = len(ref.inline)
    if size > max_bytes:
        raise BadInline(
            f"inline file {ref.name!r} is {size} bytes, over the {max_bytes}-byte inline limit",
            "too_large",
        )
    if ref.size != size:
        raise BadInline(
            f"inline file {ref.name!r} says {ref.size} bytes but carries {size}", "size_mismatch"
        )
    try:
        media_type = checked_media_type(ref.media_type)
    except BadMediaType as e:
        raise BadInline(f"inline file {ref.name!r}: {e}", "bad_media_type") from e
    return safe_file_name(ref.name), kind_for(media_type), bytes(ref.inline)


def drop_inline(result: TaskResult) -> None:
    """Leaves `result`'s files as references only: what leaves the pipeline (events, reports,
    answers) never carries their bytes."""
    for output in result.outputs:
        if output.HasField("artifact"):
            output.artifact.ClearField("inline")
