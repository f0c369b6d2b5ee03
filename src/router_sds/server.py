"""SecretDiscoveryService (state of the world) over the certificates in the config."""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import queue
import threading
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, secret_pb2
from envoy.service.discovery.v3 import discovery_pb2
from envoy.service.secret.v3 import sds_pb2_grpc
from google.protobuf import any_pb2

from router_sds.config import Config

log = logging.getLogger("router_sds")

SECRET_TYPE_URL = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"


def file_cert_name(directory: str, name: str) -> str:
    """The resource name istiod gives a Gateway server whose tls.serverCertificate/privateKey are
    `<directory>/<name>.crt` and `<directory>/<name>.key`."""
    return f"file-cert:{directory}/{name}.crt~{directory}/{name}.key"


class SecretStore:
    """The current secrets by resource name; re-reads file-backed PEMs on `refresh()`."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._secrets: dict[str, tuple[str, secret_pb2.Secret]] = {}
        self._listeners: list[queue.Queue] = []
        self.refresh()

    def refresh(self) -> bool:
        """Reload every certificate; returns True (and wakes the streams) when anything changed."""
        secrets: dict[str, tuple[str, secret_pb2.Secret]] = {}
        with self._lock:
            previous = dict(self._secrets)
        for cert in self._config.certificates:
            try:
                chain, key = cert.certificate_chain.read(), cert.private_key.read()
            except OSError as error:
                log.error("cannot read certificate %s: %s (keeping the previous one)", cert.name, error)
                if cert.name in previous:
                    secrets[cert.name] = previous[cert.name]
                continue
            names = [cert.name]
            if self._config.file_cert_dir:
                names.append(file_cert_name(self._config.file_cert_dir, cert.name))
            digest = hashlib.sha256(chain + b"\0" + key).hexdigest()[:16]
            for name in names:
                secret = secret_pb2.Secret(
                    name=name,
                    tls_certificate=common_pb2.TlsCertificate(
                        certificate_chain={"inline_bytes": chain},
                        private_key={"inline_bytes": key},
                    ),
                )
                secrets[name] = (digest, secret)
        for path in self._config.trusted_ca_files:
            name = f"file-root:{path}"
            try:
                bundle = path.read_bytes()
            except OSError as error:
                log.error("cannot read CA bundle %s: %s (keeping the previous one)", path, error)
                if name in previous:
                    secrets[name] = previous[name]
                continue
            secret = secret_pb2.Secret(
                name=name, validation_context=common_pb2.CertificateValidationContext(trusted_ca={"inline_bytes": bundle})
            )
            secrets[name] = (hashlib.sha256(bundle).hexdigest()[:16], secret)
        with self._lock:
            changed = secrets.keys() != self._secrets.keys() or any(
                secrets[n][0] != self._secrets[n][0] for n in secrets
            )
            self._secrets = secrets
            listeners = list(self._listeners)
        if changed:
            for listener in listeners:
                listener.put(None)
        return changed

    def names(self) -> list[str]:
        with self._lock:
            return sorted(self._secrets)

    def select(self, names: list[str]) -> tuple[str, list[secret_pb2.Secret], list[str]]:
        """(version, secrets found, names not found); an empty request means every secret."""
        with self._lock:
            wanted = names or sorted(self._secrets)
            found = [(n, self._secrets[n]) for n in wanted if n in self._secrets]
            missing = [n for n in wanted if n not in self._secrets]
        version = hashlib.sha256("|".join(f"{n}={d}" for n, (d, _) in found).encode()).hexdigest()[:16]
        return version, [secret for _, (_, secret) in found], missing

    def subscribe(self) -> queue.Queue:
        events: queue.Queue = queue.Queue()
        with self._lock:
            self._listeners.append(events)
        return events

    def unsubscribe(self, events: queue.Queue) -> None:
        with self._lock:
            if events in self._listeners:
                self._listeners.remove(events)


class SecretDiscovery(sds_pb2_grpc.SecretDiscoveryServiceServicer):
    def __init__(self, store: SecretStore) -> None:
        self.store = store
        self._nonces = itertools.count(1)

    def _response(self, names: list[str], peer: str) -> discovery_pb2.DiscoveryResponse:
        version, secrets, missing = self.store.select(names)
        if missing:
            log.warning("%s asked for unknown secrets %s (known: %s)", peer, ", ".join(missing), ", ".join(self.store.names()))
        resources = []
        for secret in secrets:
            resource = any_pb2.Any()
            resource.Pack(secret)
            resources.append(resource)
        return discovery_pb2.DiscoveryResponse(
            version_info=version, resources=resources, type_url=SECRET_TYPE_URL, nonce=str(next(self._nonces))
        )

    def FetchSecrets(self, request, context):  # noqa: N802 (gRPC method name)
        return self._response(list(request.resource_names), context.peer())

    def StreamSecrets(self, request_iterator, context) -> Iterator[discovery_pb2.DiscoveryResponse]:  # noqa: N802
        events = self.store.subscribe()
        peer = context.peer()

        def read_requests() -> None:
            try:
                for request in request_iterator:
                    events.put(request)
            except grpc.RpcError:
                pass
            finally:
                events.put(StopIteration)

        threading.Thread(target=read_requests, name="sds-requests", daemon=True).start()
        names: list[str] | None = None
        sent_version = None
        try:
            while context.is_active():
                try:
                    event = events.get(timeout=1.0)
                except queue.Empty:
                    continue
                if event is StopIteration:
                    return
                if event is None:  # the store changed
                    if names is None:
                        continue
                    version, _, _ = self.store.select(names)
                    if version == sent_version:
                        continue
                else:
                    request: discovery_pb2.DiscoveryRequest = event
                    if request.type_url and request.type_url != SECRET_TYPE_URL:
                        log.warning("%s asked for type %s; only %s is served", peer, request.type_url, SECRET_TYPE_URL)
                        continue
                    if request.HasField("error_detail"):
                        log.error("%s rejected secrets version %s: %s", peer, request.version_info, request.error_detail.message)
                        names = list(request.resource_names)
                        continue
                    requested = list(request.resource_names)
                    if names == requested and request.response_nonce:
                        continue  # an ACK of what we sent
                    names = requested
                response = self._response(names, peer)
                sent_version = response.version_info
                log.info("sending %d secrets (version %s) to %s", len(response.resources), sent_version, peer)
                yield response
        finally:
            self.store.unsubscribe(events)


class SdsServer:
    """The gRPC server plus the poller that re-reads file-backed certificates."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = SecretStore(config)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16, thread_name_prefix="sds"))
        sds_pb2_grpc.add_SecretDiscoveryServiceServicer_to_server(SecretDiscovery(self.store), self._server)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="sds-poll", daemon=True)
        self.port: int | None = None

    def start(self) -> None:
        listen = self.config.listen
        if listen.startswith("unix:"):
            path = Path("/" + listen.removeprefix("unix:").lstrip("/"))
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_socket():
                path.unlink()
            self._server.add_insecure_port(f"unix://{path}")
            self._server.start()
            os.chmod(path, 0o660)
        else:
            self.port = self._server.add_insecure_port(listen)
            if self.port == 0:
                raise OSError(f"cannot listen on {listen}")
            self._server.start()
        self._poller.start()
        log.info("serving %d secrets on %s", len(self.store.names()), listen)

    def _poll(self) -> None:
        while not self._stop.wait(self.config.poll_interval_seconds):
            if self.store.refresh():
                log.info("certificates changed; pushing the new versions")

    def stop(self, grace: float = 1.0) -> None:
        self._stop.set()
        self._server.stop(grace).wait()

    def wait(self) -> None:
        self._server.wait_for_termination()
