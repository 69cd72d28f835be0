"""gRPC over TLS, and mutual TLS, on a real gateway (certificates made by `openssl`)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import nats
import pytest
from chorus.v1 import chorus_pb2_grpc
from chorus.v1.chorus_pb2 import ListModelsRequest

from services.cli.client import ChorusClient, tls_credentials
from services.cli.cluster import free_port, nats_server_binary
from services.cli.main import _parser as main_parser
from services.cli.main import main
from services.common import bus
from services.common.settings import Settings, SettingsError
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
    env = _mutual_tls(cert, key)
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


@pytest.fixture
def tls_nats(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A NATS server speaking TLS only, with a self-signed certificate: its URL and the cert."""
    cert, key = _self_signed(tmp_path)
    port = free_port()
    tls = ["--tls", "--tlscert", str(cert), "--tlskey", str(key)]
    proc = subprocess.Popen(
        [nats_server_binary(), "-a", "127.0.0.1", "-p", str(port), *tls],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"tls://127.0.0.1:{port}", cert
    proc.terminate()
    proc.wait(10)


async def test_services_reach_a_tls_nats_trusting_the_ca_they_are_given(
    tls_nats: tuple[str, Path],
) -> None:
    url, cert = tls_nats
    auth = Settings.from_env({"CHORUS_NATS_URL": url, "CHORUS_NATS_TLS_CA": str(cert)})
    for _ in range(100):  # until the server listens
        try:
            nc = await bus.connect(url, "tls-test", auth.nats_auth)
            break
        except (OSError, nats.errors.NoServersError):
            await asyncio.sleep(0.1)
    assert nc.is_connected
    await nc.close()
    with pytest.raises((ssl.SSLError, nats.errors.Error, OSError)):  # no trust, no talk
        await nats.connect(url, allow_reconnect=False, connect_timeout=2)


async def test_the_cli_client_uploads_and_downloads_over_mutual_tls(
    nats_url: str, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    env = _mutual_tls(cert, key)
    sent = tmp_path / "note.txt"
    sent.write_text("over TLS")

    def round_trip(addr: str, tls: grpc.ChannelCredentials | None) -> Path:
        client = ChorusClient(addr, tls=tls)
        try:
            return client.download(client.upload(sent).id, tmp_path / "out")
        finally:
            client.close()

    async with running_stack(nats_url, env, services=("gateway",)) as settings:
        addr = settings.grpc_addr
        mutual = tls_credentials(cert, cert, key)
        assert (await asyncio.to_thread(round_trip, addr, mutual)).read_text() == "over TLS"
        for refused in (None, tls_credentials(cert)):  # plain gRPC; TLS without a certificate
            with pytest.raises(grpc.RpcError) as failed:
                await asyncio.to_thread(round_trip, addr, refused)
            assert failed.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_cli_takes_its_tls_files_from_options_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CHORUS_TLS_CA", str(tmp_path / "ca.pem"))
    args = main_parser().parse_args(["ask", "hi", "--tls-cert", "c.pem", "--tls-key", "k.pem"])
    assert (args.tls_ca, args.tls_cert, args.tls_key) == (
        tmp_path / "ca.pem",
        Path("c.pem"),
        Path("k.pem"),
    )
    with pytest.raises(SettingsError, match="--tls-ca: cannot read"):
        tls_credentials(tmp_path / "ca.pem")
    with pytest.raises(SettingsError, match="go together"):
        tls_credentials(None, Path("c.pem"))
    with pytest.raises(SystemExit) as stopped:
        main(["plan", "hi", "--grpc", "127.0.0.1:1"])
    assert stopped.value.code == 2 and "--tls-ca: cannot read" in capsys.readouterr().err


def _mutual_tls(cert: Path, key: Path) -> dict[str, str]:
    """The gateway's settings for TLS that also asks clients for a certificate signed by `cert`."""
    return {
        "CHORUS_GRPC_TLS_CERT": str(cert),
        "CHORUS_GRPC_TLS_KEY": str(key),
        "CHORUS_GRPC_TLS_CLIENT_CA": str(cert),
    }
