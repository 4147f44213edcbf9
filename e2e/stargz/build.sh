#!/usr/bin/env bash
# Builds e2e/stargz/driver.go, a stargz snapshotter daemon, offline from Debian's packages:
# golang-go and golang-github-containerd-stargz-snapshotter-dev (the snapshotter's library
# and, through its dependencies, every Go library it needs). Installs them when missing.
#
#   bash e2e/stargz/build.sh OUT_BINARY
#
# The build runs in GOPATH mode, as Debian's own Go packaging does, over a scratch copy of
# the library without the files that need Kubernetes' client libraries (not packaged): the
# CRI resolver and the CRI and kubeconfig keychains, which the driver does not use. Debian
# keeps major-version module paths without their /vN suffix: two links add them.
set -euo pipefail
out=${1:?usage: build.sh OUT_BINARY}
here=$(cd "$(dirname "$0")" && pwd)
lib=/usr/share/gocode/src/github.com/containerd/stargz-snapshotter

if ! command -v go >/dev/null 2>&1 || [ ! -d "$lib/service" ]; then
    echo "stargz: installing golang-go golang-github-containerd-stargz-snapshotter-dev"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        golang-go golang-github-containerd-stargz-snapshotter-dev >/dev/null
fi

gopath=$(mktemp -d)
trap 'rm -rf "$gopath"' EXIT
src=$gopath/src/github.com/containerd/stargz-snapshotter
mkdir -p "$(dirname "$src")" "$gopath/src/github.com/hanwen/go-fuse" \
    "$gopath/src/github.com/coreos/go-systemd" "$gopath/src/berth.test/stargz"
cp -a "$lib" "$src"
rm -rf "$src/go.mod" "$src/go.sum" "$src/service/resolver/cri.go" \
    "$src/service/keychain/cri" "$src/service/keychain/kubeconfig" "$src/service/plugin"
ln -s /usr/share/gocode/src/github.com/hanwen/go-fuse "$gopath/src/github.com/hanwen/go-fuse/v2"
ln -s /usr/share/gocode/src/github.com/coreos/go-systemd "$gopath/src/github.com/coreos/go-systemd/v22"
cp "$here/driver.go" "$gopath/src/berth.test/stargz/"

cd "$gopath/src/berth.test/stargz"
GO111MODULE=off GOPATH="$gopath:/usr/share/gocode" GOPROXY=off GOFLAGS= \
    go build -o "$out" .
echo "stargz: built $out"
