#!/usr/bin/env bash
# Builds the binaries of the local Kubernetes control plane into a per-machine
# cache outside the repository, once: etcd, kube-apiserver,
# kube-controller-manager, kube-scheduler and kubectl (one multi-call binary
# built from k8s.io/kubernetes and go.etcd.io/etcd/server/v3, see cmd/kube),
# plus kwok (and its stage definitions) and helm. Quiet and quick when the cache is warm.
#
#   build.sh              build what is missing
#   build.sh --print-dir  print the folder holding the binaries, build nothing
#
# Cache: ${TANDEM_KUBE_CACHE:-${XDG_CACHE_HOME:-~/.cache}/tandem/kube}/<versions>/bin
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
# shellcheck source=versions.env
source "$here/versions.env"

cache_root="${TANDEM_KUBE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tandem/kube}"
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_kwok-${KWOK_VERSION}_helm-${HELM_VERSION}"
dest="$cache_root/$key"
bin="$dest/bin"
multicall_names=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl)

if [[ "${1:-}" == "--print-dir" ]]; then
  echo "$bin"
  exit 0
elif [[ $# -gt 0 ]]; then
  echo "usage: $0 [--print-dir]" >&2
  exit 2
fi

fail() {
  echo "kube-local: $*" >&2
  exit 1
}

# The multi-call binary is rebuilt when its sources change, not only its versions.
source_hash="$(cat "$here/versions.env" "$here/go.mod" "$here/go.sum" "$here/cmd/kube/main.go" \
  | sha256sum | cut -c1-16)"

is_warm() {
  [[ -x "$bin/kube" && -x "$bin/kwok" && -x "$bin/helm" && -s "$dest/kwok-stages.yaml" ]] || return 1
  [[ "$(cat "$dest/source-hash" 2>/dev/null)" == "$source_hash" ]] || return 1
  local name
  for name in "${multicall_names[@]}"; do
    [[ -L "$bin/$name" ]] || return 1
  done
}

if is_warm; then
  exit 0
fi

command -v go >/dev/null || fail "the Go toolchain (go) is not on PATH; install Go >= 1.26"
command -v flock >/dev/null || fail "flock (util-linux) is not on PATH"
mkdir -p "$bin" "$dest/logs"

# One build at a time per cache folder (make and pytest may both ask).
exec 9>"$dest/.lock"
flock 9
if is_warm; then
  exit 0
fi

# Go's own caches stay outside the repository.
for var in GOCACHE GOMODCACHE; do
  value="$(go env "$var")"
  case "$value/" in
    "$repo"/*) fail "$var=$value lies inside the repository; point it elsewhere" ;;
  esac
done

if ! grep -q "^// versions: ${KUBERNETES_VERSION} ${ETCD_VERSION}\$" "$here/go.mod"; then
  fail "go.mod does not match versions.env; run hack/kube-local/gen-gomod.sh and commit go.mod/go.sum"
fi

export CGO_ENABLED=0
log="$dest/logs/build-$(date -u +%Y%m%dT%H%M%SZ).log"
start=$SECONDS
echo "kube-local: building the control plane into $dest (a cold build takes 15-30 min on 2 cores; log: $log)" >&2

kube_ldflags() {
  local minor="${KUBERNETES_VERSION#v1.}"
  minor="${minor%%.*}"
  local flags=(-s -w)
  local pkg
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=(
      "-X ${pkg}.gitVersion=${KUBERNETES_VERSION}"
      "-X ${pkg}.gitMajor=1"
      "-X ${pkg}.gitMinor=${minor}"
      "-X ${pkg}.gitTreeState=clean"
      "-X ${pkg}.buildDate=1970-01-01T00:00:00Z"
    )
  done
  echo "${flags[*]}"
}

build_multicall() {
  (cd "$here" && nice -n 10 go build -trimpath -ldflags "$(kube_ldflags)" \
    -o "$bin/kube.tmp" ./cmd/kube) >>"$log" 2>&1 \
    || fail "building etcd/kube-apiserver/kube-controller-manager/kube-scheduler/kubectl failed; see $log"
  mv -f "$bin/kube.tmp" "$bin/kube"
  local name
  for name in "${multicall_names[@]}"; do
    ln -sfn kube "$bin/$name"
  done
}

# kwok and helm carry no replace directives, so `go install module@version` works.
install_tool() {
  local name="$1" package="$2" ldflags="$3"
  local tmp="$dest/.gobin"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  (cd "$dest" && GOBIN="$tmp" nice -n 10 go install -trimpath -ldflags "$ldflags" "$package") \
    >>"$log" 2>&1 || fail "building $name ($package) failed; see $log"
  mv -f "$tmp/$name" "$bin/$name"
  rm -rf "$tmp"
}

build_multicall
install_tool kwok "sigs.k8s.io/kwok/cmd/kwok@${KWOK_VERSION}" \
  "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=${KWOK_VERSION} -X sigs.k8s.io/kwok/pkg/consts.KubeVersion=${KUBERNETES_VERSION}"
install_tool helm "helm.sh/helm/v3/cmd/helm@${HELM_VERSION}" \
  "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION} -X helm.sh/helm/v3/internal/version.gitTreeState=clean"

# Standalone kwok has no built-in stages (it refuses to start without any).
# Its module ships the upstream ones as YAML: node initialise + lease heartbeat,
# and the general pod lifecycle (Pending -> Running with an IP -> Succeeded,
# deletion). Gather them next to the binary for the cluster harness.
copy_kwok_stages() {
  local src
  src="$(go mod download -json "sigs.k8s.io/kwok@${KWOK_VERSION}" 2>>"$log" \
    | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$src/kustomize/stage" ]] || fail "kwok ${KWOK_VERSION} sources not found in the module cache; see $log"
  local stage out="$dest/kwok-stages.yaml.tmp"
  : >"$out"
  for stage in node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
    pod/general/pod-create pod/general/pod-init-container-running \
    pod/general/pod-init-container-completed pod/general/pod-ready \
    pod/general/pod-complete pod/general/pod-delete; do
    [[ -f "$src/kustomize/stage/$stage.yaml" ]] || fail "kwok stage $stage.yaml missing from $src"
    { echo "---"; cat "$src/kustomize/stage/$stage.yaml"; } >>"$out"
  done
  mv -f "$out" "$dest/kwok-stages.yaml"
}
copy_kwok_stages

echo "$source_hash" >"$dest/source-hash"
echo "kube-local: built in $((SECONDS - start)) s: $(cd "$bin" && ls | tr '\n' ' ')" >&2
