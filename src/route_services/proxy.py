"""The route-service proxy: an HTTP/1.1 server on loopback that the router's Envoy sends every request of a
route bound to a route service to, with three headers Copilot's route sets (ROUTE_*_HEADER: the route's
host, its context path, the route service URL; plus the longer context paths under it on the same host).

- No X-CF-Proxy-Signature: the request goes to the route service URL over HTTPS (its own path and
  query; the original URL travels in X-CF-Forwarded-Url), signed, method, body and other headers kept;
  its answer comes back unchanged.
  With internal lookup (Config.internal_lookup) and a route service that is a route of this foundation
  (ROUTE_SERVICE_INTERNAL_HEADER, from Copilot's route), the same signed request goes to this router's
  own HTTP listener instead, which routes it to the route service's app, as gorouter's internal lookup
  ("hairpinning") skips the load balancer.
- A signature: the route service's return trip. The signature must be ours (current or decrypt-only
  key), not older than the timeout, and name a URL of this very route (host + context path); then the
  three headers are removed and the request goes to Envoy's loopback Gateway server, whose route sends
  it to the app. Otherwise 502 (504 when expired), as gorouter answers.

Bodies stream both ways; nothing is buffered whole.
"""

from __future__ import annotations

import hmac
import http.client
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

from route_services.config import Config
from route_services.signature import RouteServiceKeys, SignatureError, SignatureExpired

log = logging.getLogger("route_services")

# Set by Copilot on the route that sends a route service's requests here (and stripped from clients'
# requests by the router filter): they must equal copilot.istio.builder's ROUTE_SERVICE_*_HEADER.
ROUTE_HOST_HEADER = "x-cf-rs-route-host"
ROUTE_PATH_HEADER = "x-cf-rs-route-path"  # "/" for the host's root route
ROUTE_SERVICE_URL_HEADER = "x-cf-rs-route-service-url"
ROUTE_EXCLUDED_HEADER = "x-cf-rs-route-excluded-paths"  # space-separated longer context paths of the host
ROUTE_SERVICE_INTERNAL_HEADER = "x-cf-rs-route-service-internal"  # "true": the route service is a route of ours
TOKEN_HEADER = "x-cf-rs-local-token"  # Config.local_token, from the router's Envoy
# Set by the proxy on a verified return trip: the X-Forwarded-Proto the router saw from the route
# service, which the loopback Gateway's route restores (Envoy would say "http", its loopback listener's).
FORWARDED_PROTO_HEADER = "x-cf-rs-forwarded-proto"

SIGNATURE_HEADER = "X-CF-Proxy-Signature"
METADATA_HEADER = "X-CF-Proxy-Metadata"
FORWARDED_URL_HEADER = "X-CF-Forwarded-Url"
ROUTER_ERROR_HEADER = "X-Cf-Routererror"
_PROTOCOL_HEADERS = {SIGNATURE_HEADER.lower(), METADATA_HEADER.lower(), FORWARDED_URL_HEADER.lower()}
_OWN_PREFIX = "x-cf-rs-"
# Hop-by-hop headers (RFC 9110 7.6.1, and what Go's reverse proxy drops), never forwarded.
_HOP_BY_HOP = {
    "connection", "proxy-connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length", "host",
}
_CHUNK = 64 * 1024
_NAME_MISMATCH = {62, 63, 64}  # X509_V_ERR_HOSTNAME_MISMATCH, _EMAIL_MISMATCH, _IP_ADDRESS_MISMATCH


class _Failure(Exception):
    """An answer the proxy gives itself: status, message for the body, optional X-Cf-Routererror."""

    def __init__(self, status: int, message: str, router_error: str = "", *, reason: str = "", body: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason or http.client.responses.get(status, "")
        self.body = (body or f"{status} {self.reason}: {message}") + "\n"
        self.router_error = router_error


def host_without_port(host: str) -> str:
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _upstream_tls(config: Config) -> ssl.SSLContext:
    context = ssl.create_default_context()  # the operating system's trust store
    for pem in config.ca_certs:
        context.load_verify_locations(cadata=pem)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if config.skip_ssl_validation:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.client_cert_file and config.client_key_file:
        context.load_cert_chain(str(config.client_cert_file), str(config.client_key_file))
    return context


def _own_router_tls() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_OWN_ROUTER_TLS = _own_router_tls()


class RouteServiceProxy:
    """The proxy's server; `start()` serves on a thread of its own, `port` is where it listens."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.keys = RouteServiceKeys(config.secret, config.secret_decrypt_only, config.timeout_seconds) if config.secret else None
        self.tls = _upstream_tls(config)
        handler = type("Handler", (_Handler,), {"proxy": self, "timeout": config.request_timeout_seconds})
        server_class = type("Server", (ThreadingHTTPServer,), {
            "address_family": socket.AF_INET6 if ":" in config.listen[0] else socket.AF_INET,
            "daemon_threads": True,
            "request_queue_size": 128,
        })
        self._server = server_class(config.listen, handler)
        self.port: int = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    def start(self) -> RouteServiceProxy:
        self._thread = threading.Thread(target=self._server.serve_forever, name="route-services", daemon=True)
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self._server.serve_forever()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    proxy: RouteServiceProxy

    def __getattr__(self, name: str) -> Any:
        # Every method (GET, POST, PROPFIND, ...) is proxied alike.
        if name.startswith("do_"):
            return self._handle
        raise AttributeError(name)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        log.debug("%s " + format, self.address_string(), *args)

    # ------------------------------------------------------------------ the two directions

    def _handle(self) -> None:
        try:
            if self.proxy.keys is None:
                raise _Failure(502, "Support for route services is disabled.", "route_service_unsupported")
            if self.headers.get("Upgrade", "").lower() == "websocket":
                raise _Failure(
                    503, "Websocket requests are not supported for routes bound to Route Services.", "route_service_unsupported"
                )
            token = self.proxy.config.local_token
            if token and not hmac.compare_digest(self.headers.get(TOKEN_HEADER, "").encode(), token.encode()):
                log.error("a request without the router's token (%s): not from the router's Envoy", TOKEN_HEADER)
                raise _Failure(500, "Route service request failed.")
            route = _Route.from_headers(self.headers)
            if self.headers.get(SIGNATURE_HEADER):
                self._return_trip(route)
            else:
                self._to_route_service(route)
        except _Failure as failure:
            self._fail(failure)

    def _to_route_service(self, route: _Route) -> None:
        config, keys = self.proxy.config, self.proxy.keys
        assert keys is not None
        scheme = "https" if config.recommend_https else "http"
        forwarded_url = f"{scheme}://{host_without_port(self.headers.get('Host', ''))}{self.path}"
        service = urlsplit(route.service_url)
        if service.scheme != "https" or not service.hostname:
            log.error("route service URL %r is not https", route.service_url)
            raise _Failure(500, "Route service request failed.")
        try:
            signature, metadata = keys.sign(forwarded_url)
        except Exception:
            log.exception("cannot sign a route service request")
            raise _Failure(500, "Route service request failed.") from None
        headers = self._forwarded_headers()
        headers += [(FORWARDED_URL_HEADER, forwarded_url), (SIGNATURE_HEADER, signature), (METADATA_HEADER, metadata)]
        authority = service.netloc.rpartition("@")[2]
        target = (service.path or "/") + (f"?{service.query}" if service.query else "")
        if config.internal_lookup is not None and self.headers.get(ROUTE_SERVICE_INTERNAL_HEADER) == "true":
            connection: http.client.HTTPConnection = self._connect_own_router(service.hostname)
        else:
            connection = self._connect_route_service(service.hostname, service.port or 443)
        self._exchange(connection, target, [("Host", authority), *headers])

    def _return_trip(self, route: _Route) -> None:
        keys = self.proxy.keys
        assert keys is not None
        try:
            contents = keys.verify(self.headers.get(SIGNATURE_HEADER, ""), self.headers.get(METADATA_HEADER, ""))
        except SignatureExpired as error:
            log.info("route service signature expired", extra={"host": route.host, "path": route.path})
            raise _Failure(504, f"Failed to validate Route Service Signature: {error}") from None
        except SignatureError as error:
            log.info("route service signature invalid: %s", error, extra={"host": route.host, "path": route.path})
            raise _Failure(502, f"Failed to validate Route Service Signature: {error}") from None
        mismatch = route.mismatch(contents.forwarded_url, host_without_port(self.headers.get("Host", "")))
        if mismatch:
            log.info("route service signature for another route: %s", mismatch)
            raise _Failure(502, f"Failed to validate Route Service Signature: {mismatch}")
        headers = self._forwarded_headers()
        headers.append((FORWARDED_PROTO_HEADER, self.headers.get("X-Forwarded-Proto", "http")))
        host, port = self.proxy.config.gateway
        connection = http.client.HTTPConnection(host, port, timeout=self.proxy.config.connect_timeout_seconds)
        try:
            connection.connect()
        except OSError as error:
            raise _Failure(502, "Registered endpoint failed to handle the request.", f"endpoint_failure ({error})") from None
        self._exchange(connection, self.path, [("Host", self.headers.get("Host", "")), *headers])

    # ------------------------------------------------------------------ plumbing

    def _forwarded_headers(self) -> list[tuple[str, str]]:
        """The request's headers minus hop-by-hop ones, the route service protocol's, ours and Envoy's."""
        listed = {h.strip().lower() for v in self.headers.get_all("Connection", []) for h in v.split(",")}
        out = []
        for name, value in self.headers.items():
            lower = name.lower()
            if lower in _HOP_BY_HOP or lower in listed or lower in _PROTOCOL_HEADERS:
                continue
            if lower.startswith(_OWN_PREFIX) or lower.startswith("x-envoy-"):
                continue
            out.append((name, value))
        return out

    def _connect_own_router(self, server_name: str) -> http.client.HTTPConnection:
        """Internal lookup: the route service is a route of ours, reached through this very router, over
        HTTPS (the route service's name as SNI) when the request reached the router so, else HTTP: the
        router then tells the route service the client's scheme, as through the load balancer."""
        config = self.proxy.config
        assert config.internal_lookup is not None
        https = config.internal_lookup_https if self.headers.get("X-Forwarded-Proto") == "https" else None
        host, port = https or config.internal_lookup
        connection = http.client.HTTPConnection(host, port, timeout=config.connect_timeout_seconds)
        try:
            sock = socket.create_connection((host, port), timeout=config.connect_timeout_seconds)
            if https:
                # This router's own listener at a configured address: its certificate proves nothing more.
                try:
                    sock = _OWN_ROUTER_TLS.wrap_socket(sock, server_hostname=server_name)
                except BaseException:
                    sock.close()
                    raise
            connection.sock = sock
        except OSError as error:
            raise _Failure(502, "Registered endpoint failed to handle the request.", f"endpoint_failure ({error})") from None
        return connection

    def _connect_route_service(self, host: str, port: int) -> http.client.HTTPSConnection:
        config = self.proxy.config
        last: OSError | None = None
        for _ in range(config.max_attempts):
            connection = http.client.HTTPSConnection(host, port, timeout=config.connect_timeout_seconds, context=self.proxy.tls)
            try:
                connection.connect()
                return connection
            except ssl.SSLCertVerificationError as error:
                detail = f"endpoint_failure ({error.verify_message or error})"
                if error.verify_code in _NAME_MISMATCH:  # gorouter: 503 for a certificate of another name
                    raise _Failure(503, "", detail, body="503 Service Unavailable") from None
                raise _Failure(526, "", detail, reason="Invalid SSL Certificate", body="526 Invalid SSL Certificate") from None
            except ssl.SSLError as error:
                detail = f"endpoint_failure ({error.reason or error})"
                raise _Failure(525, "", detail, reason="SSL Handshake Failed", body="525 SSL Handshake Failed") from None
            except OSError as error:  # refused, unreachable, DNS, connect timeout: try again
                last = error
                connection.close()
        raise _Failure(502, "Registered endpoint failed to handle the request.", f"endpoint_failure ({last})")

    def _exchange(self, connection: http.client.HTTPConnection, target: str, headers: list[tuple[str, str]]) -> None:
        """Sends the request (streaming its body) and streams the answer back."""
        connection.sock.settimeout(self.proxy.config.request_timeout_seconds)
        body, length = self._request_body()
        try:
            try:
                connection.putrequest(self.command, target, skip_host=True, skip_accept_encoding=True)
                for name, value in headers:
                    connection.putheader(name, value)
                if length is not None:
                    connection.putheader("Content-Length", str(length))
                elif body is not None:
                    connection.putheader("Transfer-Encoding", "chunked")
                connection.endheaders()
                for chunk in body or ():
                    connection.send(chunk if length is not None else b"%x\r\n%s\r\n" % (len(chunk), chunk))
                if body is not None and length is None:
                    connection.send(b"0\r\n\r\n")
                response = connection.getresponse()
            except (OSError, ValueError, http.client.HTTPException) as error:
                self.close_connection = True
                raise _Failure(502, "Registered endpoint failed to handle the request.", f"endpoint_failure ({error})") from None
            self._relay(response)
        finally:
            connection.close()

    def _request_body(self) -> tuple[Iterator[bytes] | None, int | None]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._chunked_body(), None
        length = self.headers.get("Content-Length")
        if length is None:
            return None, None
        if not length.isdigit():
            self.close_connection = True
            raise _Failure(400, "Invalid Content-Length.")
        return self._sized_body(int(length)), int(length)

    def _sized_body(self, length: int, *, closed: str = "the client closed before sending its whole body") -> Iterator[bytes]:
        while length > 0:
            chunk = self.rfile.read(min(length, _CHUNK))
            if not chunk:
                raise ConnectionError(closed)
            length -= len(chunk)
            yield chunk

    def _chunked_body(self) -> Iterator[bytes]:
        while True:
            line = self.rfile.readline(1024)
            size = int(line.split(b";", 1)[0].strip() or b"x", 16)
            if size == 0:
                while self.rfile.readline(8192) not in (b"\r\n", b"\n", b""):
                    pass  # trailers are dropped
                return
            yield from self._sized_body(size, closed="the client closed inside a chunk")
            self.rfile.readline(8)

    def _relay(self, response: http.client.HTTPResponse) -> None:
        """The upstream's answer, unchanged but for hop-by-hop headers; a body without a length is chunked."""
        listed = {h.strip().lower() for v in response.headers.get_all("Connection", []) for h in v.split(",")}
        self.send_response_only(response.status, response.reason)
        for name, value in response.getheaders():
            lower = name.lower()
            if lower in _HOP_BY_HOP - {"content-length"} or lower in listed:
                continue
            if lower == "content-length" and response.length is None and not self._bodiless(response):
                continue
            self.send_header(name, value)
        if self._bodiless(response):
            self.end_headers()
            return
        chunked = response.length is None
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            while True:
                chunk = response.read1(_CHUNK)
                if not chunk:
                    break
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
                self.wfile.flush()
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (OSError, http.client.HTTPException):
            self.close_connection = True  # the answer is cut short: the client must see the connection end

    def _bodiless(self, response: http.client.HTTPResponse) -> bool:
        return self.command == "HEAD" or response.status in (204, 304) or 100 <= response.status < 200

    def _fail(self, failure: _Failure) -> None:
        body = failure.body.encode()
        self.send_response_only(failure.status, failure.reason)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        if self.headers.get("Content-Length", "0") != "0" or "Transfer-Encoding" in self.headers:
            # The body may not have been read: the connection cannot carry another request.
            self.close_connection = True
            self.send_header("Connection", "close")
        self.send_header("X-Content-Type-Options", "nosniff")
        if failure.router_error:
            self.send_header(ROUTER_ERROR_HEADER, failure.router_error)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Route:
    """What Copilot's route says about the request: the route's host, context path ("" for the root),
    route service URL, and the longer context paths of the same host under this one (other routes)."""

    def __init__(self, host: str, path: str, service_url: str, excluded: tuple[str, ...]) -> None:
        self.host, self.path, self.service_url, self.excluded = host, path, service_url, excluded

    @classmethod
    def from_headers(cls, headers: http.client.HTTPMessage) -> _Route:
        host, path, url = headers.get(ROUTE_HOST_HEADER), headers.get(ROUTE_PATH_HEADER), headers.get(ROUTE_SERVICE_URL_HEADER)
        if not host or not path or not url:
            log.error("a request without its route's headers (%s, %s, %s)", ROUTE_HOST_HEADER, ROUTE_PATH_HEADER,
                      ROUTE_SERVICE_URL_HEADER)
            raise _Failure(500, "Route service request failed.")
        excluded = tuple(p for p in headers.get(ROUTE_EXCLUDED_HEADER, "").split(" ") if p)
        return cls(host.lower(), "" if path == "/" else path, url, excluded)

    def mismatch(self, forwarded_url: str, request_host: str) -> str:
        """Why the URL a signature names is not this route's (host and context path), or ""."""
        url = urlsplit(forwarded_url)
        host = host_without_port(url.netloc.rpartition("@")[2]).lower()
        uri = host + url.path
        if not url.scheme or not host:
            return f"original request URL {forwarded_url[:200]} does not exist in the routing table"
        within = _within(url.path, self.path) and not any(_within(url.path, p) for p in self.excluded)
        if host != request_host.lower() or not within:
            return f"route service forwarded URL {self.host}{self.path} does not match the original request URL {uri[:200]}"
        return ""


def _within(path: str, context_path: str) -> bool:
    return not context_path or path == context_path or path.startswith(context_path + "/")
