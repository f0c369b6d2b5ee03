"""The xDS side, which knows nothing of Cloud Foundry: `store` (Istio objects by kind and name, with
content digests; readiness), `snapshot` (the immutable versioned state the store hands over),
`encoding` (the MCP envelope and DiscoveryResponse wire layout) and `mcp_server` (the ADS protocol
istiod speaks, answering from the snapshot it holds)."""
