"""istio-route-registrar: registers a VM's platform routes (api, uaa, doppler, ...) with Copilot.

It takes routing-release's `route_registrar.routes` (rendered by the istio-route-registrar job into a
JSON config) and, instead of publishing them on NATS, registers them with every Copilot's registrar
API over mutual TLS, renewing them every `registration_interval` while their health check passes.
"""
