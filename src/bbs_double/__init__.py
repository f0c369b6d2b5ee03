"""A Diego BBS test double: serves the real BBS wire protocol (protobuf over mutual-TLS HTTPS,
and the lrp_instances server-sent-event stream) from in-memory state that tests drive as a Diego
cell would. See `bbs_double.server.BBSDouble`; `python -m bbs_double` runs one standalone."""
