"""An Envoy Secret Discovery Service (SDS) for the Istio router without pilot-agent.

istiod points gateway TLS listeners at an `sds-grpc` cluster for their certificates; in a Kubernetes
Istio, pilot-agent answers there. On a BOSH router VM this small server does: it serves the TLS
certificates the istio-router job was given (inline PEM or files) over
envoy.service.secret.v3.SecretDiscoveryService on a unix socket or a loopback port.
"""
