# Shared by the packaging scripts of the Python packages (copilot, router-sds); sourced, not run.
# Runs in the package's compile directory (the package's own files, laid out as in its spec) and
# writes only to $BOSH_INSTALL_TARGET. Nothing is downloaded: the runtime and every wheel are blobs.
#
#   install_python_runtime     python/python-*-linux-amd64.tar.gz -> $BOSH_INSTALL_TARGET/python
#   install_wheels             every python-wheels/*.whl the package ships, offline
#   install_source DIR         a source package (e.g. copilot, daemon_kit) into the runtime's site-packages
#   write_launcher NAME MODULE $BOSH_INSTALL_TARGET/bin/NAME runs `python -m MODULE`

: "${BOSH_INSTALL_TARGET:?BOSH_INSTALL_TARGET is not set (packaging scripts run under bosh)}"
export PIP_ROOT_USER_ACTION=ignore  # the compilation VM runs packaging as root

die() { echo "packaging error: $*" >&2; exit 1; }

# one_blob PATTERN: the single file matching PATTERN, or a clear failure.
one_blob() {
  local matches=()
  local f
  for f in $1; do [ -e "$f" ] && matches+=("$f"); done
  [ "${#matches[@]}" -gt 0 ] || die "missing blob $1 (in $(pwd)); run scripts/add-blobs before bosh create-release"
  [ "${#matches[@]}" -eq 1 ] || die "more than one blob matches $1: ${matches[*]} (bosh remove-blob the old one)"
  printf '%s\n' "${matches[0]}"
}

runtime_python() {
  LD_LIBRARY_PATH="$BOSH_INSTALL_TARGET/python/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
    "$BOSH_INSTALL_TARGET/python/bin/python3" -I "$@"
}

install_python_runtime() {
  local tarball
  tarball=$(one_blob 'python/python-*-linux-amd64.tar.gz')
  echo "installing the Python runtime from $tarball"
  tar -xzf "$tarball" -C "$BOSH_INSTALL_TARGET"
  [ -x "$BOSH_INSTALL_TARGET/python/bin/python3" ] \
    || die "$tarball has no python/bin/python3 (expected a python-build-standalone style install_only tarball)"
  runtime_python -c 'import ssl, sys; print("python", sys.version.split()[0], "with", ssl.OPENSSL_VERSION)' \
    || die "the Python runtime from $tarball does not start on this machine"
}

install_wheels() {
  local wheels=()
  local f
  for f in python-wheels/*.whl; do [ -e "$f" ] && wheels+=("$f"); done
  [ "${#wheels[@]}" -gt 0 ] || die "missing blobs python-wheels/*.whl; run scripts/add-blobs before bosh create-release"
  if ! runtime_python -m pip --version >/dev/null 2>&1; then
    runtime_python -m ensurepip >/dev/null || die "the Python runtime has neither pip nor ensurepip"
  fi
  echo "installing ${#wheels[@]} wheels offline"
  runtime_python -m pip install --no-index --find-links python-wheels --no-cache-dir --disable-pip-version-check \
    --no-warn-script-location --quiet "${wheels[@]}" \
    || die "pip could not install the wheels offline (a wheel missing from python-wheels/, or built for another Python?)"
}

install_source() {
  local dir=$1 site
  [ -d "$dir" ] || die "missing source directory $dir"
  site=$(runtime_python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "installing $dir into $site"
  rm -rf "${site:?}/$dir"
  cp -R "$dir" "$site/$dir"
  find "$site/$dir" -name __pycache__ -prune -exec rm -rf {} +
  runtime_python -m compileall -q "$site/$dir" >/dev/null || die "$dir does not compile"
}

write_launcher() {
  local name=$1 module=$2
  mkdir -p "$BOSH_INSTALL_TARGET/bin"
  cat >"$BOSH_INSTALL_TARGET/bin/$name" <<LAUNCHER
#!/usr/bin/env bash
# $name: runs the Python module $module with the package's own Python runtime.
pkg=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")/.." && pwd)
export LD_LIBRARY_PATH="\$pkg/python/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
exec "\$pkg/python/bin/python3" -I -m $module "\$@"
LAUNCHER
  chmod 0755 "$BOSH_INSTALL_TARGET/bin/$name"
  "$BOSH_INSTALL_TARGET/bin/$name" --help >/dev/null || die "bin/$name --help failed after installing"
}
