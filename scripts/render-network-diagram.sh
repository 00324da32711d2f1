#!/usr/bin/env bash
# Renders docs/architecture/network.dot to docs/architecture/network.svg with Graphviz (Debian
# package graphviz, installed here when missing and apt-get is usable; otherwise it says so and
# exits 0 without touching the SVG). The SVG is committed; pg_ops_tests/test_gitops.py fails when
# it is stale.
#   scripts/render-network-diagram.sh [--check]   --check: exit 1 if the committed SVG is stale
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=docs/architecture/network.dot
OUT=docs/architecture/network.svg

if ! command -v dot >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz) >/dev/null 2>&1 || true
    fi
    if ! command -v dot >/dev/null 2>&1; then
        echo "render-network-diagram: Graphviz 'dot' is not installed (apt-get install graphviz); $OUT left as it is" >&2
        exit 0
    fi
fi

# The source's hash in the SVG lets a test without Graphviz see that the SVG is stale.
render() {
    dot -Tsvg "$SRC" | sed "s|^<svg |<!-- source: $SRC sha256 $(sha256sum "$SRC" | cut -d' ' -f1) -->\n<svg |"
}

if [ "${1:-}" = "--check" ]; then
    if ! diff -q <(render) "$OUT" >/dev/null; then
        echo "render-network-diagram: $OUT is stale: run scripts/render-network-diagram.sh and commit it" >&2
        exit 1
    fi
    exit 0
fi
render > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "wrote $OUT ($(dot -V 2>&1))"
