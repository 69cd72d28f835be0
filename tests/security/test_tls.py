"""gRPC over TLS, and mutual TLS, on a real gateway (certificates made by `openssl`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import grpc
import pytest
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ListModelsRequest

from services.common.settings import SettingsError
from services.gateway.config import GatewayConfig
from tests.integration.stack import running_stack

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
NAME_OVERRIDE = (("grpc.ssl_target_name_override", "localhost"),)


def _self_signed(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    request = [
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=localhost",
    ]
    names = ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"]
    subprocess.run(
        ["openssl", *request, "-keyout", str(key), "-out", str(cert), *names],
        check=True,
        capture_output=True,
    )
    return cert, key


async def _list_models(addr: str, credentials: grpc.ChannelCredentials | None) -> None:
    channel = (
        grpc.aio.insecure_channel(addr)
        if credentials is None
        else grpc.aio.secure_channel(addr, credentials, options=NAME_OVERRIDE)
    )
    async with channel:
        await chorus_pb2_grpc.ChorusStub(channel).ListModels(ListModelsRequest(), timeout=5)


async def test_grpc_over_mutual_tls_admits_only_clients_with_a_certificate(
    nats_url: str, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    env = {
        "CHORUS_GRPC_TLS_CERT": str(cert),
        "CHORUS_GRPC_TLS_KEY": str(key),
        "CHORUS_GRPC_TLS_CLIENT_CA": str(cert),
    }
    pem, key_pem = cert.read_bytes(), key.read_bytes()
    async with running_stack(nats_url, env, services=("gateway",)) as settings:
        addr = settings.grpc_addr
        await _list_models(addr, grpc.ssl_channel_credentials(pem, key_pem, pem))
        for refused in (None, grpc.ssl_channel_credentials(pem)):
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await _list_models(addr, refused)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_missing_certificate_stops_start_up_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(SettingsError, match="CHORUS_GRPC_TLS_CERT") as refused:
        GatewayConfig.from_env(
            {"CHORUS_GRPC_TLS_CERT": str(missing), "CHORUS_GRPC_TLS_KEY": str(missing)}
        )
    assert str(missing) in str(refused.value)
