"""The router's route-service proxy: gorouter's route service protocol beside the router's Envoy.

Envoy sends every request of a route bound to a route service here (loopback only). Without a
signature the request goes to the route service, signed (X-CF-Forwarded-Url, X-CF-Proxy-Signature,
X-CF-Proxy-Metadata); with one it is the route service's return trip: the signature is checked and
the request handed back to Envoy's loopback Gateway server, which routes it to the app."""
