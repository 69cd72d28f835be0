"""Time measured from protobuf timestamps (pure: the responder's rules use it)."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def seconds_since(created_at: Timestamp) -> float:
    now = Timestamp()
    now.GetCurrentTime()
    return max(0.0, (now.ToNanoseconds() - created_at.ToNanoseconds()) / 1e9)
