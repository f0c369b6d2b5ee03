"""router-sds: the SDS server beside the router's Envoy, through a real gRPC client."""

from __future__ import annotations

import queue
import threading
from pathlib import Path

import grpc
import pytest
import yaml
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.rpc import status_pb2

from router_sds.config import ConfigError, load, parse
from router_sds.server import SECRET_TYPE_URL, SdsServer, file_cert_name


def secrets_of(response: discovery_pb2.DiscoveryResponse) -> dict[str, secret_pb2.Secret]:
    assert response.type_url == SECRET_TYPE_URL
    out = {}
    for resource in response.resources:
        secret = secret_pb2.Secret()
        assert resource.Unpack(secret)
        out[secret.name] = secret
    return out


@pytest.fixture
def cert_files(pki, tmp_path) -> tuple[Path, Path]:
    cert, key = tmp_path / "file.crt", tmp_path / "file.key"
    cert.write_text(pki.server.cert)
    key.write_text(pki.server.key)
    return cert, key


@pytest.fixture
def server(pki, cert_files, tmp_path):
    config = parse({
        "listen": "127.0.0.1:0",
        "poll_interval_seconds": 0.1,
        "file_cert_dir": "/var/vcap/jobs/istio-router/config/certs",
        "certificates": [
            {"name": "inline", "certificate_chain": pki.server.cert, "private_key": pki.server.key},
            {"name": "from-files", "certificate_chain_file": str(cert_files[0]), "private_key_file": str(cert_files[1])},
        ],
    })
    sds = SdsServer(config)
    sds.start()
    yield sds
    sds.stop(0)


@pytest.fixture
def stub(server):
    channel = grpc.insecure_channel(f"127.0.0.1:{server.port}")
    yield sds_pb2_grpc.SecretDiscoveryServiceStub(channel)
    channel.close()


def test_fetch_secrets_returns_the_configured_certificate(stub, pki):
    response = stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=["inline"], type_url=SECRET_TYPE_URL))
    secrets = secrets_of(response)
    assert list(secrets) == ["inline"]
    tls = secrets["inline"].tls_certificate
    assert tls.certificate_chain.inline_bytes.decode() == pki.server.cert
    assert tls.private_key.inline_bytes.decode() == pki.server.key
    assert response.version_info and response.nonce


def test_fetch_everything_and_istio_file_cert_names(stub):
    everything = secrets_of(stub.FetchSecrets(discovery_pb2.DiscoveryRequest()))
    alias = file_cert_name("/var/vcap/jobs/istio-router/config/certs", "inline")
    certs = "/var/vcap/jobs/istio-router/config/certs"
    assert alias == f"file-cert:{certs}/inline.crt~{certs}/inline.key"
    assert set(everything) >= {"inline", "from-files", alias}
    assert list(secrets_of(stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=[alias])))) == [alias]


def test_unknown_names_are_left_out(stub):
    response = stub.FetchSecrets(discovery_pb2.DiscoveryRequest(resource_names=["nope", "inline"]))
    assert list(secrets_of(response)) == ["inline"]


class Stream:
    """A StreamSecrets call driven request by request."""

    def __init__(self, stub) -> None:
        self.requests: queue.Queue = queue.Queue()
        self.responses: queue.Queue = queue.Queue()
        self.call = stub.StreamSecrets(iter(self.requests.get, None))
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.responses.put(response)
        except grpc.RpcError:
            pass

    def send(self, names: list[str], nonce: str = "", version: str = "", error: str | None = None) -> None:
        request = discovery_pb2.DiscoveryRequest(resource_names=names, type_url=SECRET_TYPE_URL, response_nonce=nonce,
                                                 version_info=version)
        if error:
            request.error_detail.CopyFrom(status_pb2.Status(code=3, message=error))
        self.requests.put(request)

    def next(self, timeout: float = 5.0) -> discovery_pb2.DiscoveryResponse:
        return self.responses.get(timeout=timeout)

    def nothing_for(self, seconds: float) -> bool:
        try:
            self.responses.get(timeout=seconds)
        except queue.Empty:
            return True
        return False

    def close(self) -> None:
        self.requests.put(None)
        self.call.cancel()


def test_stream_sends_acks_nothing_and_pushes_changed_files(stub, cert_files, pki, tmp_path):
    stream = Stream(stub)
    try:
        stream.send(["from-files"])
        first = stream.next()
        assert list(secrets_of(first)) == ["from-files"]
        stream.send(["from-files"], nonce=first.nonce, version=first.version_info)  # ACK
        assert stream.nothing_for(0.5)

        other = tmp_path / "other"
        other.mkdir()
        from devtools.certs import make_ca

        new = make_ca(other, "other-ca").issue("rotated", other, dns_names=["rotated.example.com"], client=False)
        cert_files[1].write_text(new.key_path.read_text())
        cert_files[0].write_text(new.cert_path.read_text())
        pushed = stream.next()
        assert pushed.version_info != first.version_info
        chain = secrets_of(pushed)["from-files"].tls_certificate.certificate_chain.inline_bytes.decode()
        assert chain == new.cert_path.read_text()

        stream.send(["from-files", "inline"], nonce=pushed.nonce, version=pushed.version_info)  # a new name
        assert set(secrets_of(stream.next())) == {"from-files", "inline"}
    finally:
        stream.close()


def test_stream_does_not_resend_after_a_nack(stub):
    stream = Stream(stub)
    try:
        stream.send(["inline"])
        first = stream.next()
        stream.send(["inline"], nonce=first.nonce, version="", error="bad certificate")
        assert stream.nothing_for(0.5)
    finally:
        stream.close()


def test_unix_socket_listener(pki, tmp_path):
    import tempfile

    socket_dir = Path(tempfile.mkdtemp(prefix="sds", dir="/tmp"))
    config = parse({"listen": f"unix://{socket_dir}/sub/sds.sock",
                    "certificates": [{"name": "inline", "certificate_chain": pki.server.cert, "private_key": pki.server.key}]})
    sds = SdsServer(config)
    sds.start()
    try:
        assert (socket_dir / "sub" / "sds.sock").is_socket()
        with grpc.insecure_channel(f"unix://{socket_dir}/sub/sds.sock") as channel:
            response = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).FetchSecrets(
                discovery_pb2.DiscoveryRequest(resource_names=["inline"]), timeout=5)
        assert list(secrets_of(response)) == ["inline"]
    finally:
        sds.stop(0)
        import shutil

        shutil.rmtree(socket_dir, ignore_errors=True)


@pytest.mark.parametrize(("data", "message"), [
    ({}, "listen: is required"),
    ({"listen": "nowhere"}, "listen: 'nowhere' must be unix:///path or host:port"),
    ({"listen": "127.0.0.1:1", "extra": 1}, "extra: unknown key"),
    ({"listen": "127.0.0.1:1", "certificates": [{"certificate_chain": "x"}]}, r"certificates\[0\].name: is required"),
    ({"listen": "127.0.0.1:1", "certificates": [{"name": "a", "certificate_chain": "not pem", "private_key": "x"}]},
     r"certificates\[0\].certificate_chain: is not a PEM certificate"),
    ({"listen": "127.0.0.1:1", "certificates": [{"name": "a", "certificate_chain_file": "/nonexistent", "private_key": "x"}]},
     r"certificates\[0\].certificate_chain_file: file /nonexistent does not exist"),
    ({"listen": "127.0.0.1:1", "log_level": "loud"}, "log_level: 'loud' is not one of"),
])
def test_config_errors_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message):
        parse(data)


def test_duplicate_names_are_refused(pki):
    cert = {"name": "a", "certificate_chain": pki.server.cert, "private_key": pki.server.key}
    with pytest.raises(ConfigError, match=r"certificates\[1\].name: 'a' is given twice"):
        parse({"listen": "127.0.0.1:1", "certificates": [cert, cert]})


def test_load_reads_yaml_files(pki, tmp_path):
    path = tmp_path / "sds.yml"
    path.write_text(yaml.safe_dump({"listen": "127.0.0.1:1"}))
    assert load(path).certificates == ()
    with pytest.raises(ConfigError, match="cannot read config file"):
        load(tmp_path / "missing.yml")


def test_trusted_ca_files_are_served_as_istio_file_root_names(pki, tmp_path):
    """istiod asks for a DestinationRule's caCertificates path as `file-root:<path>`; router_sds answers
    with that bundle as a validation context (platform backends reached over TLS depend on it)."""
    bundle = tmp_path / "upstream_ca.crt"
    bundle.write_text(pki.ca)
    sds = SdsServer(parse({"listen": "127.0.0.1:0", "trusted_ca_files": [str(bundle)]}))
    sds.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{sds.port}") as channel:
            name = f"file-root:{bundle}"
            response = sds_pb2_grpc.SecretDiscoveryServiceStub(channel).FetchSecrets(
                discovery_pb2.DiscoveryRequest(resource_names=[name], type_url=SECRET_TYPE_URL)
            )
        secret = secrets_of(response)[name]
        assert secret.validation_context.trusted_ca.inline_bytes.decode() == pki.ca
    finally:
        sds.stop(0)
