"""Protocol definitions (.proto) for BBS, Istio networking and MCP; generated *_pb2 modules sit beside them."""
