#!/usr/bin/env bash
# The local control plane: a real etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, and kwok simulating nodes and pod lifecycles, all on loopback.
#
#   e2e/cluster.sh up          build (if needed) and start everything; wait until healthy
#   e2e/cluster.sh down        stop exactly the processes `up` started, remove state
#   e2e/cluster.sh status      say what runs; exit 0 only when everything is healthy
#   e2e/cluster.sh kubeconfig  print the path of the admin kubeconfig
#   e2e/cluster.sh env         print `export` lines for KUBECONFIG and PATH
#   e2e/cluster.sh restart apiserver|etcd
#                              SIGKILL one and start it again as it was; wait until ready
#
# Binaries come from e2e/tools/build.sh (cached outside the repository). State
# (certificates, etcd data, logs, pid files) lives in $CLAUDE_OPERATOR_E2E_STATE,
# by default e2e/.state. Ports can be moved with the variables below.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
state="${CLAUDE_OPERATOR_E2E_STATE:-$here/.state}"
etcd_port="${E2E_ETCD_PORT:-23790}"
etcd_peer_port="${E2E_ETCD_PEER_PORT:-23800}"
api_port="${E2E_APISERVER_PORT:-26443}"
kcm_port="${E2E_KCM_PORT:-30257}"
sched_port="${E2E_SCHEDULER_PORT:-30259}"
kwok_port="${E2E_KWOK_PORT:-30247}"
nodes="${E2E_NODES:-2}"
components=(etcd kube-apiserver kube-controller-manager kube-scheduler kwok)

log() { echo "cluster: $*" >&2; }

pid_alive() { # component
  local f="$state/pids/$1"
  [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null
}

stop_all() {
  local c pid
  # Reverse order: clients first, etcd last.
  for ((i = ${#components[@]} - 1; i >= 0; i--)); do
    c="${components[$i]}"
    [[ -f "$state/pids/$c" ]] || continue
    pid="$(cat "$state/pids/$c")"
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$state/pids/$c"
  done
}

bin_dir() {
  if [[ -z "${E2E_BIN:-}" ]]; then
    E2E_BIN="$("$here/tools/build.sh")"
  fi
  echo "$E2E_BIN"
}

gen_certs() {
  local d="$state/pki"
  mkdir -p "$d"
  [[ -f "$d/.complete" ]] && return
  log "generating certificates"
  (
    cd "$d"
    openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 3650 \
      -subj "/CN=claude-operator-e2e-ca" 2>/dev/null
    # Serving certificate of the apiserver: loopback names and the in-cluster names.
    cat >apiserver.ext <<EOF
subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
    openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj "/CN=kube-apiserver" 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -out apiserver.crt \
      -days 3650 -extfile apiserver.ext 2>/dev/null
    # Client certificates: the admin (system:masters) and each component's identity.
    echo "extendedKeyUsage=clientAuth" >client.ext
    client() { # file, CN, O
      openssl req -newkey rsa:2048 -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$2${3:+/O=$3}" 2>/dev/null
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$1.crt" \
        -days 3650 -extfile client.ext 2>/dev/null
    }
    client admin admin system:masters
    client kube-controller-manager system:kube-controller-manager ""
    client kube-scheduler system:kube-scheduler ""
    # Service-account token signing keys.
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    touch .complete
  )
  # Added after the first layout: made on their own so an existing state gains them.
  if [[ ! -f "$d/apiserver-kubelet-client.crt" ]]; then
    (
      cd "$d"
      # The apiserver's identity towards kubelets (logs, exec): kubelets authenticate it by
      # this certificate and authorize it by SubjectAccessReview (system:kubelet-api-admin).
      openssl req -newkey rsa:2048 -nodes -keyout apiserver-kubelet-client.key -out apiserver-kubelet-client.csr \
        -subj "/CN=kube-apiserver-kubelet-client" 2>/dev/null
      openssl x509 -req -in apiserver-kubelet-client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
        -out apiserver-kubelet-client.crt -days 3650 -extfile client.ext 2>/dev/null
    )
  fi
}

write_kubeconfig() { # file, cert basename
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://127.0.0.1:$api_port
    certificate-authority: $state/pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $state/pki/$2.crt
    client-key: $state/pki/$2.key
contexts:
- name: e2e
  context: {cluster: e2e, user: $2}
current-context: e2e
EOF
}

start() { # component, command...
  local c="$1"; shift
  mkdir -p "$state/pids" "$state/logs"
  # setsid: the component leaves this shell's process group, so an interrupted
  # caller does not take it down halfway; `down` stops it by pid.
  setsid "$@" >"$state/logs/$c.log" 2>&1 </dev/null &
  echo $! >"$state/pids/$c"
}

wait_for() { # what, seconds, command...
  local what="$1" secs="$2"; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! pid_alive "$what" || ((SECONDS > deadline)); then
      log "$what did not become healthy (exited, or not within ${secs}s); last log lines:"
      tail -n 30 "$state/logs/$what.log" >&2 || true
      return 1
    fi
    sleep 0.3
  done
}

healthy() { # url, cert basename or "", 
  local url="$1" who="${2:-}"
  if [[ -n "$who" ]]; then
    curl -fsS --max-time 2 --cacert "$state/pki/ca.crt" --cert "$state/pki/$who.crt" --key "$state/pki/$who.key" "$url"
  else
    curl -fsSk --max-time 2 "$url"
  fi
}

kubectl_() { "$(bin_dir)/kubectl" --kubeconfig "$state/admin.kubeconfig" "$@"; }

cmd_up() {
  local bin
  bin="$(bin_dir)"
  if status_quiet; then
    log "already up"
    return 0
  fi
  # Anything left from a crashed run is stopped and wiped before starting anew.
  stop_all
  rm -rf "$state/etcd" "$state/logs"
  mkdir -p "$state"
  gen_certs
  write_kubeconfig "$state/admin.kubeconfig" admin
  write_kubeconfig "$state/kube-controller-manager.kubeconfig" kube-controller-manager
  write_kubeconfig "$state/kube-scheduler.kubeconfig" kube-scheduler
  local t0=$SECONDS

  start etcd "$bin/etcd" --name e2e --data-dir "$state/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "e2e=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --quota-backend-bytes 4294967296 --log-level warn
  wait_for etcd 30 curl -fsS "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver "$bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --endpoint-reconciler-type none \
    --tls-cert-file "$state/pki/apiserver.crt" --tls-private-key-file "$state/pki/apiserver.key" \
    --client-ca-file "$state/pki/ca.crt" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NodeRestriction \
    --kubelet-preferred-address-types InternalIP \
    --kubelet-client-certificate "$state/pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$state/pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$state/pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$state/pki/sa.pub" \
    --service-account-signing-key-file "$state/pki/sa.key" \
    --allow-privileged=true \
    --profiling=false \
    --max-requests-inflight 1000 --max-mutating-requests-inflight 500 \
    --v 1
  wait_for kube-apiserver 90 healthy "https://127.0.0.1:$api_port/readyz" admin

  start kube-controller-manager "$bin/kube-controller-manager" \
    --kubeconfig "$state/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$state/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$state/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" \
    --service-account-private-key-file "$state/pki/sa.key" \
    --root-ca-file "$state/pki/ca.crt" \
    --use-service-account-credentials \
    --leader-elect=false \
    --concurrent-gc-syncs 20 --concurrent-namespace-syncs 10 \
    --v 1
  start kube-scheduler "$bin/kube-scheduler" \
    --kubeconfig "$state/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$state/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$state/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" \
    --leader-elect=false --v 1
  start kwok "$bin/kwok" \
    --kubeconfig "$state/admin.kubeconfig" \
    --config "$here/kwok/stages.yaml" \
    --manage-all-nodes=false \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr 10.244.0.0/16 --node-ip 10.0.0.1 \
    --server-address "127.0.0.1:$kwok_port"
  wait_for kube-controller-manager 60 healthy "https://127.0.0.1:$kcm_port/healthz"
  wait_for kube-scheduler 60 healthy "https://127.0.0.1:$sched_port/healthz"
  wait_for kwok 60 curl -fsS "http://127.0.0.1:$kwok_port/healthz"

  for i in $(seq 0 $((nodes - 1))); do
    kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  done
  # Ready when the nodes are Ready and the default namespace has its service
  # account (the controller-manager's service-account controller works).
  wait_for kube-apiserver 60 kubectl_ wait --for=condition=Ready node --all --timeout=2s
  wait_for kube-controller-manager 60 kubectl_ get serviceaccount default -n default
  # A real node's kubelet (e2e/node.sh) authorizes the apiserver's logs/exec requests by
  # asking the apiserver itself (webhook): this binding is what answers yes.
  kubectl_ create clusterrolebinding kube-apiserver-kubelet-client --clusterrole system:kubelet-api-admin \
    --user kube-apiserver-kubelet-client >/dev/null
  log "up in $((SECONDS - t0))s; export KUBECONFIG=$state/admin.kubeconfig"
}

status_quiet() {
  local c
  for c in "${components[@]}"; do pid_alive "$c" || return 1; done
  [[ -f "$state/admin.kubeconfig" ]] || return 1
  healthy "https://127.0.0.1:$api_port/readyz" admin >/dev/null 2>&1
}

cmd_status() {
  local c ok=0
  for c in "${components[@]}"; do
    if pid_alive "$c"; then echo "$c: running (pid $(cat "$state/pids/$c"))"; else echo "$c: stopped"; ok=1; fi
  done
  if ((ok == 0)) && status_quiet; then echo "apiserver: ready at https://127.0.0.1:$api_port"; else ok=1; fi
  return $ok
}

cmd_down() {
  # A real node on this plane keeps mounts and processes under $state/node: it goes first.
  if [[ -d "$state/node" ]]; then "$here/node.sh" down; fi
  stop_all
  rm -rf "$state"
  log "down"
}

# `restart apiserver|etcd`: the chaos run's outage. SIGKILLs the component, as
# a crash would, and starts it again with the very command line it had (read
# from /proc, so `up` stays the one place that says how); waits until it, and
# the apiserver in front of etcd, is ready again. The old log is kept as
# <component>.log.<n>.
cmd_restart() {
  local c
  case "${1:-}" in
    apiserver | kube-apiserver) c=kube-apiserver ;;
    etcd) c=etcd ;;
    *) echo "usage: $0 restart apiserver|etcd" >&2; return 2 ;;
  esac
  pid_alive "$c" || { log "$c is not running"; return 1; }
  local pid n=1
  pid="$(cat "$state/pids/$c")"
  local -a argv
  mapfile -d '' argv <"/proc/$pid/cmdline"
  ((${#argv[@]} > 0)) || { log "cannot read the command line of $c"; return 1; }
  kill -9 "$pid"
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  while [[ -e "$state/logs/$c.log.$n" ]]; do n=$((n + 1)); done
  mv "$state/logs/$c.log" "$state/logs/$c.log.$n"
  local t0=$SECONDS
  start "$c" "${argv[@]}"
  if [[ "$c" == etcd ]]; then
    wait_for etcd 60 curl -fsS "http://127.0.0.1:$etcd_port/health"
  fi
  wait_for kube-apiserver 120 healthy "https://127.0.0.1:$api_port/readyz" admin
  log "$c restarted; ready again in $((SECONDS - t0))s"
}

case "${1:-}" in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  kubeconfig) echo "$state/admin.kubeconfig" ;;
  env)
    echo "export KUBECONFIG=$state/admin.kubeconfig"
    echo "export PATH=$(bin_dir):\$PATH"
    ;;
  restart) cmd_restart "${2:-}" ;;
  *)
    echo "usage: $0 up|down|status|kubeconfig|env|restart apiserver|etcd" >&2
    exit 2
    ;;
esac
