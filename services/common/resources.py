"""The input resources of a request: files the user attached, found by the names they go by."""

from __future__ import annotations

from chorus.v1.messages_pb2 import ArtifactRef, ChatRequest


def request_text(request: ChatRequest) -> str:
    """The request proper: the last user message."""
    for message in reversed(request.messages):
        if message.role == "user":
            return message.content
    return ""


def resources_of(request: ChatRequest) -> dict[str, ArtifactRef]:
    """Every attached file by name, newest turn winning, so earlier outputs stay addressable."""
    found: dict[str, ArtifactRef] = {}
    for message in request.messages:
        for artifact in message.artifacts:
            found[artifact.name] = artifact
    return found


def find_resource(value: str, resources: dict[str, ArtifactRef]) -> ArtifactRef | None:
    """`photo.jpg`, `/examples/photo.jpg` or `./photo.jpg` all name the upload `photo.jpg`."""
    stripped = value.strip().strip("'\"")
    if stripped in resources:
        return resources[stripped]
    base = stripped.replace("\\", "/").rsplit("/", 1)[-1]
    return resources.get(base)
