"""The daemon kit: what every Python daemon of the release (copilot, istio-route-registrar, router-sds,
route-services) shares, with the standard library only so each BOSH package can ship it as it is.

- `config`: the strict config-section reader (every bad or unknown key named) and the file read step.
- `cli`: `main()` for a daemon: `--config F [--check]`, exit 2 on a bad config, signals, logging.
- `logs`: the one log style, JSON lines on stdout.
- `httpd`: a threaded plain-HTTP server and `reply`, writing a complete answer (JSON or bytes).
"""
