#!/usr/bin/env bash
# One real Kubernetes node on this machine, joined to the local control plane
# (e2e/cluster.sh): containerd + runc, CNI bridge/host-local/loopback/portmap,
# kubelet, kube-proxy and kube-router's NetworkPolicy controller (firewall only).
#
#   e2e/node.sh check    exit 0 when this machine can run the node, else say why (exit 1)
#   e2e/node.sh up       build (if needed) and start the node; wait until it is Ready
#   e2e/node.sh down     stop exactly what `up` started, by pid; restore sysctls,
#                        iptables rules and chains, ipsets, cgroups, mounts, links
#   e2e/node.sh status   say what runs; exit 0 only when the node is Ready
#   e2e/node.sh env      print `export` lines (KUBECONFIG, PATH, the containerd address)
#   e2e/node.sh import ARCHIVE   import an OCI/Docker image archive into the node
#
# The node is named $E2E_NODE_NAME (default real-node-0), labelled
# claude-operator.dev/node=real and tainted claude-operator.dev/real-node=true:NoSchedule:
# only pods that select and tolerate it land there. Its address is a /32 on a
# bridge this script creates ($E2E_NODE_IP, default 10.250.0.1); pods get
# addresses from $E2E_POD_CIDR (default 10.250.16.0/24) on a second bridge. The
# `kubernetes` Service is given an endpoint on the node address, forwarded to the
# loopback apiserver, so pods see the API where a real cluster puts it.
# State lives in $CLAUDE_OPERATOR_E2E_STATE/node (the control plane's state dir).
# Needs root and cgroups (see `check`). Binaries: e2e/tools/build-node.sh.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${CLAUDE_OPERATOR_E2E_STATE:-$here/.state}"
node_state="$state/node"
api_port="${E2E_APISERVER_PORT:-26443}"
node_name="${E2E_NODE_NAME:-real-node-0}"
node_ip="${E2E_NODE_IP:-10.250.0.1}"
pod_cidr="${E2E_POD_CIDR:-10.250.16.0/24}"
service_cidr=10.96.0.0/16 # e2e/cluster.sh's --service-cluster-ip-range
kubelet_port="${E2E_KUBELET_PORT:-10250}"
kubelet_healthz_port="${E2E_KUBELET_HEALTHZ_PORT:-10248}"
proxy_healthz_port="${E2E_KUBE_PROXY_HEALTHZ_PORT:-10256}"
proxy_metrics_port="${E2E_KUBE_PROXY_METRICS_PORT:-10249}"
node_bridge=co-node0
pod_bridge=co-cni0
# The pods' gateway (the pod bridge's address): the range's first address.
pod_net="${pod_cidr%/*}"
pod_gateway="${pod_cidr%.*}.$((${pod_net##*.} + 1))"
pause_image="localhost/claude-operator/pause:e2e"
components=(containerd kubelet kube-proxy kube-router api-forward)
# Sysctls the kubelet, kube-proxy and the bridge plugin may change: saved at the first
# `up`, written back on `down`.
sysctls=(vm.overcommit_memory kernel.panic kernel.panic_on_oops net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables
  net.bridge.bridge-nf-call-ip6tables kernel.keys.root_maxkeys kernel.keys.root_maxbytes)
# Fixed paths the kubelet or containerd create whatever their configuration says.
fixed_paths=(/var/lib/kubelet /var/log/containers /var/log/pods /run/containerd /var/run/nri /etc/cni /opt/cni)

log() { echo "node: $*" >&2; }
die() { log "$*"; exit 1; }

# Why this machine cannot run the node, or nothing.
why_not() {
  [[ $(id -u) -eq 0 ]] || { echo "not root (containerd, kubelet and iptables need root)"; return; }
  if [[ -f /sys/fs/cgroup/cgroup.controllers ]]; then
    grep -qw memory /sys/fs/cgroup/cgroup.controllers || { echo "cgroup v2 without the memory controller"; return; }
  else
    [[ -d /sys/fs/cgroup/memory && -d /sys/fs/cgroup/cpu && -d /sys/fs/cgroup/pids ]] ||
      { echo "no cgroups (neither cgroup v2 nor v1 memory/cpu/pids hierarchies under /sys/fs/cgroup)"; return; }
  fi
  local t
  for t in runc iptables iptables-save ipset ip socat openssl curl gcc go; do
    command -v "$t" >/dev/null || { echo "missing $t (e2e/ensure-deps.sh installs it)"; return; }
  done
  ip link add co-probe0 type bridge 2>/dev/null || { echo "cannot create a bridge interface"; return; }
  ip link del co-probe0
}

pid_alive() { local f="$node_state/pids/$1"; [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null; }

start() { # component, command...
  local c="$1"; shift
  mkdir -p "$node_state/pids" "$node_state/logs"
  setsid "$@" >"$node_state/logs/$c.log" 2>&1 </dev/null &
  echo $! >"$node_state/pids/$c"
}

stop() { # components...: SIGTERM to each, up to 10 s for all to exit, then SIGKILL
  local c pids=()
  for c in "$@"; do
    [[ -f "$node_state/pids/$c" ]] && pids+=("$(cat "$node_state/pids/$c")")
  done
  if ((${#pids[@]})); then
    kill "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "${pids[@]}" 2>/dev/null || break; sleep 0.1; done
    kill -9 "${pids[@]}" 2>/dev/null || true
  fi
  for c in "$@"; do rm -f "$node_state/pids/$c"; done
}

wait_for() { # component, seconds, command...
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$what" || ((SECONDS > deadline)); then
      log "$what did not become ready (exited, or not within ${secs}s); last log lines:"
      tail -n 30 "$node_state/logs/$what.log" >&2 || true
      return 1
    fi
    sleep 0.3
  done
}

bins() {
  [[ -n "${E2E_BIN:-}" ]] || E2E_BIN="$("$here/tools/build.sh")"
  [[ -n "${E2E_NODE_BIN:-}" ]] || E2E_NODE_BIN="$("$here/tools/build-node.sh")"
}
kubectl_() { "$E2E_BIN/kubectl" --kubeconfig "$state/admin.kubeconfig" "$@"; }
ctr_() { "$E2E_NODE_BIN/ctr" --address "$node_state/run/containerd.sock" -n k8s.io "$@"; }

# --- host state: saved once before the first change, restored on down -------------

save_host() {
  local s="$node_state/saved"
  [[ -f "$s/.complete" ]] && return
  mkdir -p "$s"
  local k
  for k in "${sysctls[@]}"; do
    sysctl -n "$k" >/dev/null 2>&1 && echo "$k=$(sysctl -n "$k")"
  done >"$s/sysctls"
  iptables-save >"$s/iptables"
  ip6tables-save >"$s/ip6tables" 2>/dev/null || true
  ipset list -n >"$s/ipsets" 2>/dev/null || true
  findmnt -no PROPAGATION / >"$s/root-propagation"
  for k in /sys/fs/cgroup/*/; do
    [[ -d "$k" ]] && find "$k" -mindepth 1 -maxdepth 1 -type d
  done >"$s/cgroups" 2>/dev/null || true
  for k in "${fixed_paths[@]}"; do [[ -e "$k" ]] && echo "$k"; done >"$s/paths" || true
  touch "$s/.complete"
}

# Deletes the rules `up` added to chains that existed before, then the chains it created
# (user chains, policy "-", absent from the saved copy). Builtin chains stay.
restore_iptables() { # iptables|ip6tables, saved file
  local cmd="$1" before="$2" now table chain
  [[ -f "$before" ]] && command -v "$cmd-save" >/dev/null || return 0
  now="$(mktemp)"
  "$cmd-save" >"$now" 2>/dev/null || true
  section() { sed -n "/^\*$2\$/,/^COMMIT/p" "$1"; }
  for table in $(sed -n 's/^\*//p' "$now"); do
    local new_chains="" rules
    new_chains="$(comm -13 <(section "$before" "$table" | sed -n 's/^:\([^ ]*\) - .*/\1/p' | sort) \
      <(section "$now" "$table" | sed -n 's/^:\([^ ]*\) - .*/\1/p' | sort))"
    rules="$(comm -13 <(section "$before" "$table" | grep '^-A ' | sort || true) \
      <(section "$now" "$table" | grep '^-A ' | sort || true))"
    while IFS= read -r line; do
      [[ -n "$line" ]] || continue
      chain="$(cut -d' ' -f2 <<<"$line")"
      grep -qxF -- "$chain" <<<"$new_chains" && continue
      # xargs parses the save format's quoting.
      echo "${line#-A }" | xargs "$cmd" -w -t "$table" -D 2>/dev/null || log "could not delete: $cmd -t $table $line"
    done <<<"$rules"
    for chain in $new_chains; do "$cmd" -w -t "$table" -F "$chain" 2>/dev/null || true; done
    for chain in $new_chains; do "$cmd" -w -t "$table" -X "$chain" 2>/dev/null || log "could not delete chain $table/$chain"; done
  done
  rm -f "$now"
}

restore_host() {
  local s="$node_state/saved" k v line
  [[ -f "$s/.complete" ]] || return 0
  restore_iptables iptables "$s/iptables"
  restore_iptables ip6tables "$s/ip6tables"
  if command -v ipset >/dev/null; then
    for k in $(comm -13 <(sort "$s/ipsets") <(ipset list -n 2>/dev/null | sort)); do
      ipset destroy "$k" 2>/dev/null || log "could not destroy ipset $k"
    done
  fi
  while IFS= read -r line; do
    k="${line%%=*}" v="${line#*=}"
    [[ "$(sysctl -n "$k" 2>/dev/null)" == "$v" ]] || sysctl -qw "$k=$v" || log "could not restore $k"
  done <"$s/sysctls"
  # Cgroups the kubelet created (kubepods, ...): leaves first.
  local now_cgroups
  now_cgroups="$(for k in /sys/fs/cgroup/*/; do find "$k" -mindepth 1 -maxdepth 1 -type d; done 2>/dev/null | sort || true)"
  for v in $(comm -13 <(sort "$s/cgroups") <(echo "$now_cgroups")); do
    find "$v" -depth -type d -exec rmdir {} \; 2>/dev/null || log "cgroup $v still in use"
  done
  for k in "${fixed_paths[@]}"; do
    if [[ -e "$k" ]] && ! grep -qxF -- "$k" "$s/paths"; then rm -rf "$k"; fi
  done
  case "$(cat "$s/root-propagation")" in
    private) mount --make-rprivate / ;;
    slave) mount --make-rslave / ;;
  esac
}

# After restore_host: says what still differs from the saved host state; fails if anything.
verify_restored() {
  local s="$node_state/saved" bad=0 k v line rules
  [[ -f "$s/.complete" ]] || return 0
  for cmd in iptables ip6tables; do
    [[ -f "$s/$cmd" ]] && command -v "$cmd-save" >/dev/null || continue
    rules="$(comm -13 <(grep -E '^(-A |:[^ ]+ - )' "$s/$cmd" | sed 's/ \[[0-9:]*\]$//' | sort) \
      <("$cmd-save" 2>/dev/null | grep -E '^(-A |:[^ ]+ - )' | sed 's/ \[[0-9:]*\]$//' | sort))"
    [[ -z "$rules" ]] || { log "$cmd: left behind: $rules"; bad=1; }
  done
  rules="$(comm -13 <(sort "$s/ipsets") <(ipset list -n 2>/dev/null | sort))"
  [[ -z "$rules" ]] || { log "ipsets left behind: $rules"; bad=1; }
  while IFS= read -r line; do
    k="${line%%=*}" v="${line#*=}"
    [[ "$(sysctl -n "$k" 2>/dev/null)" == "$v" ]] || { log "sysctl $k is $(sysctl -n "$k"), was $v"; bad=1; }
  done <"$s/sysctls"
  v="$(for k in /sys/fs/cgroup/*/; do find "$k" -mindepth 1 -maxdepth 1 -type d; done 2>/dev/null | sort | comm -13 <(sort "$s/cgroups") - || true)"
  [[ -z "$v" ]] || { log "cgroups left behind: $v"; bad=1; }
  [[ "$(findmnt -no PROPAGATION /)" == "$(cat "$s/root-propagation")" ]] || { log "/ propagation not restored"; bad=1; }
  v="$(awk -v p="$node_state/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo)"
  [[ -z "$v" ]] || { log "mounts left behind: $v"; bad=1; }
  for k in "$pod_bridge" "$node_bridge"; do ip link show "$k" >/dev/null 2>&1 && { log "link $k left behind"; bad=1; }; done
  for k in "${fixed_paths[@]}"; do
    [[ -e "$k" ]] && ! grep -qxF -- "$k" "$s/paths" && { log "$k left behind"; bad=1; }
  done
  return $bad
}

# Every mount under the node's state (overlay rootfs, netns, volume tmpfs), deepest first.
unmount_state() {
  local m
  for m in $(awk -v p="$node_state/" 'index($5, p) == 1 {print $5}' /proc/self/mountinfo | sort -r); do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || log "could not unmount $m"
  done
}

# --- certificates and configuration -------------------------------------------------

cert() { # name, subject, extfile content
  local d="$node_state/pki"
  [[ -f "$d/$1.crt" ]] && return
  mkdir -p "$d"
  printf '%s\n' "$3" >"$d/$1.ext"
  openssl req -newkey rsa:2048 -nodes -keyout "$d/$1.key" -out "$d/$1.csr" -subj "$2" 2>/dev/null
  openssl x509 -req -in "$d/$1.csr" -CA "$state/pki/ca.crt" -CAkey "$state/pki/ca.key" -CAcreateserial \
    -CAserial "$d/ca.srl" -out "$d/$1.crt" -days 3650 -extfile "$d/$1.ext" 2>/dev/null
}

kubeconfig() { # file, cert name
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://127.0.0.1:$api_port", certificate-authority: "$state/pki/ca.crt"}
users:
- name: $2
  user: {client-certificate: "$node_state/pki/$2.crt", client-key: "$node_state/pki/$2.key"}
contexts:
- name: e2e
  context: {cluster: e2e, user: $2}
current-context: e2e
EOF
}

write_config() {
  mkdir -p "$node_state"/{run,containerd/root,containerd/state,opt,cni/net.d,cni/ipam,kubelet,logs/pods}
  # Client identities: the kubelet as a node (Node authorizer, NodeRestriction), kube-proxy
  # as system:kube-proxy (bound to system:node-proxier by default), kube-router as its own user.
  cert kubelet-client "/CN=system:node:$node_name/O=system:nodes" "extendedKeyUsage=clientAuth"
  cert kubelet-serving "/CN=$node_name" "subjectAltName=IP:$node_ip,DNS:$node_name
extendedKeyUsage=serverAuth"
  cert kube-proxy "/CN=system:kube-proxy" "extendedKeyUsage=clientAuth"
  cert kube-router "/CN=claude-operator-e2e:kube-router" "extendedKeyUsage=clientAuth"
  kubeconfig "$node_state/kubelet.kubeconfig" kubelet-client
  kubeconfig "$node_state/kube-proxy.kubeconfig" kube-proxy
  kubeconfig "$node_state/kube-router.kubeconfig" kube-router

  cat >"$node_state/containerd.toml" <<EOF
version = 3
root = "$node_state/containerd/root"
state = "$node_state/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]
[grpc]
  address = "$node_state/run/containerd.sock"
[ttrpc]
  address = "$node_state/run/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins.'io.containerd.internal.v1.opt']
  path = "$node_state/opt"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "$pause_image"
[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
      BinaryName = "$(command -v runc)"
      SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["$E2E_NODE_BIN/cni"]
    conf_dir = "$node_state/cni/net.d"
[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
EOF

  # ipMasq off: pods have no business leaving this machine's own networks.
  cat >"$node_state/cni/net.d/10-claude-operator-e2e.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "claude-operator-e2e",
  "plugins": [
    {
      "type": "bridge", "bridge": "$pod_bridge", "isGateway": true, "ipMasq": false, "hairpinMode": true,
      "ipam": {"type": "host-local", "dataDir": "$node_state/cni/ipam",
               "ranges": [[{"subnet": "$pod_cidr", "gateway": "$pod_gateway"}]], "routes": [{"dst": "0.0.0.0/0"}]}
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
EOF

  cat >"$node_state/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine mounts cgroup v1 hierarchies; Kubernetes 1.35+ refuses them unless told.
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$node_state/run/containerd.sock
address: $node_ip
port: $kubelet_port
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $kubelet_healthz_port
tlsCertFile: $node_state/pki/kubelet-serving.crt
tlsPrivateKeyFile: $node_state/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $state/pki/ca.crt}
authorization:
  mode: Webhook
clusterDomain: cluster.local
clusterDNS: [10.96.0.10]
podLogsDir: $node_state/logs/pods
volumePluginDir: $node_state/kubelet/volume-plugins
failSwapOn: false
protectKernelDefaults: false
serializeImagePulls: false
# Images are imported, never pulled: never let garbage collection or disk-pressure
# eviction remove them on a busy shared disk.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {memory.available: "20Mi", nodefs.available: "1%", imagefs.available: "1%", nodefs.inodesFree: "1%"}
# A moment of disk pressure on the shared disk (another build) would otherwise taint the
# node disk-pressure for the default 5 minutes after the space is back.
evictionPressureTransitionPeriod: 10s
registerWithTaints:
- {key: claude-operator.dev/real-node, value: "true", effect: NoSchedule}
shutdownGracePeriod: 0s
EOF

  cat >"$node_state/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $node_state/kube-proxy.kubeconfig}
hostnameOverride: $node_name
mode: iptables
clusterCIDR: $pod_cidr
detectLocalMode: ClusterCIDR
bindAddress: $node_ip
healthzBindAddress: 127.0.0.1:$proxy_healthz_port
metricsBindAddress: 127.0.0.1:$proxy_metrics_port
nodePortAddresses: ["$node_ip/32"]
iptables: {localhostNodePorts: false}
# Leave the host's conntrack sysctls alone.
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
EOF
}

# The pause image: the static `pause` built by build-node.sh, as an OCI archive.
import_pause() {
  ctr_ images ls -q | grep -qxF "$pause_image" && return
  local d
  d="$(mktemp -d)"
  mkdir -p "$d/rootfs"
  cp "$E2E_NODE_BIN/pause" "$d/rootfs/pause"
  "$here/tools/oci-image.sh" "$pause_image" "$d/rootfs" "$d/pause.tar" /pause
  ctr_ images import "$d/pause.tar" >/dev/null
  rm -rf "$d"
}

node_ready() {
  [[ "$(kubectl_ get node "$node_name" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

kube_router_synced() { iptables -w -S KUBE-ROUTER-FORWARD >/dev/null 2>&1; }

cmd_up() {
  local reason
  reason="$(why_not)"
  [[ -z "$reason" ]] || die "cannot run a real node here: $reason"
  [[ -f "$state/admin.kubeconfig" && -f "$state/pki/ca.key" ]] || die "the control plane is not up (e2e/cluster.sh up)"
  bins
  if status_quiet; then log "already up"; return 0; fi
  # Leftovers of a crashed run are stopped and cleaned first.
  [[ -d "$node_state/pids" ]] && cmd_down
  local t0=$SECONDS
  mkdir -p "$node_state"
  save_host
  write_config

  # Kubelet and containerd propagate volume mounts into containers: they need shared mounts.
  mount --make-rshared /
  ip link show "$node_bridge" >/dev/null 2>&1 || ip link add "$node_bridge" type bridge
  ip addr replace "$node_ip/32" dev "$node_bridge"
  ip link set "$node_bridge" up

  start containerd "$E2E_NODE_BIN/containerd" --config "$node_state/containerd.toml"
  wait_for containerd 60 ctr_ version
  import_pause

  start kubelet "$E2E_NODE_BIN/kubelet" --config "$node_state/kubelet.yaml" \
    --kubeconfig "$node_state/kubelet.kubeconfig" --root-dir "$node_state/kubelet" \
    --cert-dir "$node_state/kubelet/pki" --hostname-override "$node_name" --node-ip "$node_ip" \
    --node-labels "claude-operator.dev/node=real" --v 1
  wait_for kubelet 120 kubectl_ get node "$node_name"
  # The node's pod range, for kube-router (the pods' addresses come from the CNI config).
  if [[ -z "$(kubectl_ get node "$node_name" -o jsonpath='{.spec.podCIDR}')" ]]; then
    kubectl_ patch node "$node_name" --type merge -p "{\"spec\":{\"podCIDR\":\"$pod_cidr\",\"podCIDRs\":[\"$pod_cidr\"]}}" >/dev/null
  fi

  # The `kubernetes` Service's endpoint: the apiserver listens on loopback only, so the node
  # address forwards to it (e2e/cluster.sh runs without an endpoint reconciler).
  start api-forward socat "TCP-LISTEN:$api_port,bind=$node_ip,fork,reuseaddr" "TCP:127.0.0.1:$api_port"
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: kubernetes-real-node
  namespace: default
  labels: {kubernetes.io/service-name: kubernetes, endpointslice.kubernetes.io/managed-by: claude-operator-e2e}
addressType: IPv4
endpoints: [{addresses: ["$node_ip"], conditions: {ready: true}}]
ports: [{name: https, port: $api_port, protocol: TCP}]
EOF

  start kube-proxy "$E2E_NODE_BIN/kube-proxy" --config "$node_state/kube-proxy.yaml" --v 1
  wait_for kube-proxy 60 curl -fsS "http://127.0.0.1:$proxy_healthz_port/healthz"

  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: claude-operator-e2e:kube-router}
rules:
- apiGroups: [""]
  resources: [namespaces, pods, nodes, services, endpoints]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: claude-operator-e2e:kube-router}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "claude-operator-e2e:kube-router"}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: "claude-operator-e2e:kube-router"}]
EOF
  # NetworkPolicy only: routing is the bridge's, Services are kube-proxy's. Health and
  # metrics servers off: they would listen on every address of the machine.
  start kube-router "$E2E_NODE_BIN/kube-router" --kubeconfig "$node_state/kube-router.kubeconfig" \
    --run-firewall=true --run-router=false --run-service-proxy=false --enable-cni=false \
    --hostname-override "$node_name" --service-cluster-ip-range "$service_cidr" \
    --health-port 0 --metrics-port 0 --iptables-sync-period 1m -v 1
  wait_for kube-router 60 kube_router_synced

  wait_for kubelet 120 node_ready
  log "up in $((SECONDS - t0))s: node $node_name ($node_ip), pods $pod_cidr"
}

status_quiet() {
  local c
  for c in "${components[@]}"; do pid_alive "$c" || return 1; done
  node_ready
}

cmd_status() {
  local c ok=0
  for c in "${components[@]}"; do
    if pid_alive "$c"; then echo "$c: running (pid $(cat "$node_state/pids/$c"))"; else echo "$c: stopped"; ok=1; fi
  done
  if ((ok == 0)) && bins && node_ready; then echo "node $node_name: Ready ($node_ip)"; else ok=1; fi
  return $ok
}

cmd_down() {
  [[ -d "$node_state" ]] || { log "not up"; return 0; }
  # The kubelet first, so it does not restart what is removed below.
  stop kubelet
  stop kube-router kube-proxy api-forward
  # Every pod sandbox and container: killed through containerd, which then releases
  # their shims (each exits with its task) and network namespaces.
  if pid_alive containerd && [[ -n "${E2E_NODE_BIN:-}" || -x "$("$here/tools/build-node.sh" 2>/dev/null)/ctr" ]]; then
    E2E_NODE_BIN="${E2E_NODE_BIN:-$("$here/tools/build-node.sh")}"
    local t
    for t in $(ctr_ tasks ls -q 2>/dev/null); do ctr_ tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    for t in $(ctr_ tasks ls -q 2>/dev/null); do
      for _ in $(seq 50); do ctr_ tasks delete "$t" >/dev/null 2>&1 && break; sleep 0.1; done
    done
  fi
  stop containerd
  # Shims whose task did not go: found by the address of OUR containerd in their command line.
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' <"$p/cmdline"; } 2>/dev/null | grep -qF -- "-address $node_state/run/containerd.sock "; then
      kill -9 "${p#/proc/}" 2>/dev/null || true
    fi
  done
  unmount_state
  local l
  for l in "$pod_bridge" "$node_bridge"; do ip link del "$l" 2>/dev/null || true; done
  # veths of pods whose namespaces are gone disappear with them; any left on the pod bridge went above.
  if [[ -f "$state/admin.kubeconfig" ]] && [[ -n "${E2E_BIN:-}" || -x "$("$here/tools/build.sh")/kubectl" ]]; then
    E2E_BIN="${E2E_BIN:-$("$here/tools/build.sh")}"
    if kubectl_ get --raw /readyz >/dev/null 2>&1; then
      kubectl_ delete endpointslice -n default kubernetes-real-node --ignore-not-found >/dev/null || true
      kubectl_ delete node "$node_name" --ignore-not-found --wait=false >/dev/null || true
      kubectl_ delete clusterrolebinding,clusterrole claude-operator-e2e:kube-router --ignore-not-found >/dev/null || true
    fi
  fi
  restore_host
  local ok=0
  verify_restored || ok=1
  rm -rf "$node_state"
  if ((ok)); then log "down, but the host was not fully restored (above)"; return 1; fi
  log "down; host state restored"
}

cmd_env() {
  bins
  echo "export CLAUDE_OPERATOR_E2E_STATE=$state"
  echo "export KUBECONFIG=$state/admin.kubeconfig"
  echo "export PATH=$E2E_BIN:$E2E_NODE_BIN:\$PATH"
  echo "export E2E_NODE_NAME=$node_name"
  # The real-node tests (tests/e2e_node.rs, tests/e2e_realnode.rs) run when this names the node.
  echo "export CLAUDE_OPERATOR_E2E_NODE=$node_name"
  echo "export E2E_NODE_IP=$node_ip"
  echo "export E2E_POD_CIDR=$pod_cidr"
  echo "# import an image archive: ctr --address \$CONTAINERD_ADDRESS -n k8s.io images import FILE.tar"
  echo "export CONTAINERD_ADDRESS=$node_state/run/containerd.sock"
}

case "${1:-}" in
  check)
    reason="$(why_not)"
    if [[ -n "$reason" ]]; then echo "$reason"; exit 1; fi
    ;;
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  env) cmd_env ;;
  import)
    [[ -f "${2:-}" ]] || die "usage: $0 import ARCHIVE.tar"
    bins
    ctr_ images import "$2"
    ;;
  *)
    echo "usage: $0 check|up|down|status|env|import ARCHIVE" >&2
    exit 2
    ;;
esac
