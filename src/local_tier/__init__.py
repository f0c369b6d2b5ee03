"""Runs the routing tier on one machine from the release's own jobs: renders manifests/local.yml with the
BOSH template renderer into a local root (.local/ instead of /var/vcap) and runs each job's bpm
processes under supervisor, with the BBS test double standing in for Diego."""
