#!/usr/bin/env bash
# Builds the real control plane that pg_ops's Kubernetes tests run against (kube-apiserver,
# kube-controller-manager, kube-scheduler and etcd) from this wrapper module, once per machine, into
#   ${XDG_CACHE_HOME:-$HOME/.cache}/pg-ops/kubernetes-<version>-<first 12 hex of sha256(go.sum)>/
# and does nothing when that folder is already complete. Everything comes through the Go module
# proxy, checked against go.sum. `build.sh --print-dir` prints the folder and builds nothing.
# The whole script is one function, read before it runs: editing this file while a build runs
# cannot change what that build does.
set -euo pipefail
main() {
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
sum="$(sha256sum "$here/go.sum" | cut -c1-12)"
dest="${XDG_CACHE_HOME:-$HOME/.cache}/pg-ops/kubernetes-${version}-${sum}"
if [[ "${1:-}" == "--print-dir" ]]; then echo "$dest"; exit 0; fi
binaries=(etcd kube-apiserver kube-controller-manager kube-scheduler)
complete=1
for b in "${binaries[@]}"; do [[ -x "$dest/$b" ]] || complete=0; done
if (( complete )); then echo "control plane $version: $dest (already built)"; exit 0; fi

GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
if [[ ! -x "$GO" ]]; then
  # Like scripts/apt-install.sh without root: say what will skip, do not fail `make test`.
  echo "control plane: no Go toolchain (go on PATH, /usr/local/go/bin/go): not building; the real" \
       "control-plane tests (pg_ops_tests/test_control_plane.py) will be skipped" >&2
  exit 0
fi
minor="${version#v1.}"; minor="${minor%%.*}"
pkg=k8s.io/component-base/version
cpkg=k8s.io/client-go/pkg/version
ldflags="-s -w"
for p in "$pkg" "$cpkg"; do
  ldflags+=" -X $p.gitVersion=$version -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done
mkdir -p "$(dirname "$dest")"
tmp="$(mktemp -d "$(dirname "$dest")/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cd "$here"
export GOFLAGS=-mod=mod CGO_ENABLED=0
echo "control plane $version: building into $dest (cold: about 20 minutes on 2 shared cores)"
# One go build per binary, the default parallelism (-p = GOMAXPROCS); the packages they share
# compile once, in the Go build cache.
for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
  nice -n 10 "$GO" build -trimpath -ldflags="$ldflags" -o "$tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
done
nice -n 10 "$GO" build -trimpath -ldflags="-s -w" -o "$tmp/etcd" go.etcd.io/etcd/server/v3
# go.mod/go.sum must not have moved: the folder's name is the checksum of what was built.
[[ "$(sha256sum go.sum | cut -c1-12)" == "$sum" ]] || { echo "control plane: go.sum changed during the build; commit it and build again" >&2; exit 1; }
rm -rf "$dest"
mv "$tmp" "$dest"
trap - EXIT
echo "control plane $version: built $dest"
}
main "$@"
exit
