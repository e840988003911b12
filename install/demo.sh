#!/usr/bin/env bash
# Moat demo: a standalone node on this machine, inside its own network namespace.
#
#   - builds Moat and starts `moat-agent` in standalone mode (empty manifest dir)
#   - creates 4 pods in 2 namespaces through the real `moat` CNI plugin (env + stdin,
#     exactly as a container runtime calls it)
#   - runs an HTTP server in each pod and sends real traffic between all of them
#   - applies NetworkPolicies (default deny in `billing`, allow shop/frontend → billing/api,
#     billing/api → billing/db) and shows an allowed and a denied connection with
#     `moatctl observe`, `moatctl policy explain`, `moatctl drops` and `moatctl identities`
#   - restarts the agent under an open connection
#   - prints what `moatctl` shows, then removes everything it created
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root (the demo creates network namespaces and loads eBPF)" >&2; exit 1; }
bash install/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
echo "== building Moat"
cargo build --release --bins 2>&1 | { grep -E '^(error|Finished|\s+Finished)' || true; }
B=$PWD/target/release
[ -x "$B/moat-agent" ] || { echo "build failed" >&2; exit 1; }

ID=moatdemo$$
NODE=$ID-node
RUN=/tmp/$ID
PIN=/sys/fs/bpf/$ID
SOCK=$RUN/agent.sock
CIDR=10.99.0.0/24
PODS=(shop/frontend shop/cart billing/api billing/db)
WEB=(shop/web-1 shop/web-2 shop/web-3)   # backends of the shop/web service
OUTSIDE=$ID-outside                      # a client outside the node, on its "eth0" link
PIDS=()
AGENT=""
declare -A IP

inpod() { local p=$1; shift; nsenter --net=/run/netns/$ID-${p/\//-} "$@"; }
conf() { printf '{"cniVersion":"1.1.0","name":"moat","type":"moat","socket":"%s"}' "$SOCK"; }
cni() { # cni COMMAND ns/name
  local ns=${2%/*} name=${2#*/}
  conf | env CNI_COMMAND=$1 CNI_CONTAINERID=$ID-$ns-$name CNI_NETNS=/run/netns/$ID-$ns-$name CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni CNI_ARGS="K8S_POD_NAMESPACE=$ns;K8S_POD_NAME=$name" nsenter --net=/run/netns/$NODE "$B/moat"
}
moatctl() { "$B/moatctl" --socket "$SOCK" "$@"; }
start_agent() {
  nsenter --net=/run/netns/$NODE "$B/moat-agent" --state-dir "$RUN/state" --socket "$SOCK" --pin-dir "$PIN" --data-dir "$RUN/data" \
    --pod-cidr $CIDR --node-name demo-node >>"$RUN/agent.log" 2>&1 &
  AGENT=$!
  for _ in $(seq 100); do [ -S "$SOCK" ] && moatctl status >/dev/null 2>&1 && return; sleep 0.1; done
  echo "agent did not start:"; cat "$RUN/agent.log"; exit 1
}

cleanup() {
  set +e
  echo; echo "== cleaning up"
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null; done
  for p in "${PODS[@]}" "${WEB[@]}"; do [ -e /run/netns/$ID-${p/\//-} ] && cni DEL "$p" >/dev/null; ip netns del $ID-${p/\//-} 2>/dev/null; done
  ip netns del $OUTSIDE 2>/dev/null
  [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null
  ip netns del $NODE 2>/dev/null
  rm -rf "$PIN" "$RUN"
  echo "removed pods, agent, node namespace and pins"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$RUN/state" "$RUN/www"
# The standalone node's manifests: the same YAML a cluster would hold.
for p in "${PODS[@]}" "${WEB[@]}"; do
  printf 'apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: %s\n  name: %s\n  labels: {app: %s}\nspec:\n  containers: [{name: httpd, image: busybox, ports: [{name: http, containerPort: 8080}]}]\n---\n' \
    "${p%/*}" "${p#*/}" "$(echo "${p#*/}" | sed 's/-[0-9]*$//')"
done >"$RUN/state/pods.yaml"
printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: billing}\n' \
  >"$RUN/state/namespaces.yaml"
ip netns add $NODE
ip -n $NODE link set lo up
# The node's own link to the outside world (NodePort traffic arrives here).
ip netns add $OUTSIDE
ip link add eth0 netns $NODE type veth peer name eth0 netns $OUTSIDE
ip -n $NODE addr add 192.168.200.1/24 dev eth0; ip -n $NODE link set eth0 up
ip -n $OUTSIDE addr add 192.168.200.2/24 dev eth0; ip -n $OUTSIDE link set eth0 up; ip -n $OUTSIDE link set lo up
echo "== starting moat-agent (standalone node '$NODE', pod CIDR $CIDR)"
start_agent

echo "== creating pods through the moat CNI plugin"
for p in "${PODS[@]}"; do
  ip netns add $ID-${p/\//-}
  ipaddr=$(cni ADD "$p" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ips"][0]["address"])')
  IP[$p]=${ipaddr%/*}
  printf '  %-16s %s   (CNI ADD result)\n' "$p" "$ipaddr"
  mkdir -p "$RUN/www/${p/\//-}"; echo "hello from $p" >"$RUN/www/${p/\//-}/index.html"
  nsenter --net=/run/netns/$ID-${p/\//-} busybox httpd -f -p 8080 -h "$RUN/www/${p/\//-}" >/dev/null 2>&1 &
  PIDS+=($!)
done
sleep 0.3

echo; echo "\$ moatctl endpoints"; moatctl endpoints

echo; echo "== real traffic: HTTP between every pair of pods (TCP), ping (ICMP)"
for from in "${PODS[@]}"; do
  for to in "${PODS[@]}"; do
    [ "$from" = "$to" ] && continue
    body=$(inpod "$from" curl -s --max-time 3 "http://${IP[$to]}:8080/" || echo "FAILED")
    printf '  %-16s -> %-16s %s\n' "$from" "$to" "$body"
  done
done
inpod shop/frontend ping -c 2 -q "${IP[billing/db]}" | sed 's/^/  /'

echo; echo "== NetworkPolicy: default deny in billing; shop/frontend may call billing/api; billing/api may call billing/db"
cat >"$RUN/state/policies.yaml" <<'YAML'
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: billing}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: api-from-frontend, namespace: billing}
spec:
  podSelector: {matchLabels: {app: api}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: shop}}
      podSelector: {matchLabels: {app: frontend}}
    ports:
    - {port: 8080, protocol: TCP}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-api, namespace: billing}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: api}}
YAML
sed 's/^/  /' "$RUN/state/policies.yaml" | head -12; echo "  ..."
for _ in $(seq 50); do [ "$(moatctl -o json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["policies"])')" = 3 ] && break; sleep 0.1; done
echo "  (the agent picked up the change; it watches its manifest directory)"
for pair in "shop/frontend billing/api" "shop/cart billing/api" "billing/api billing/db" "shop/frontend billing/db"; do
  set -- $pair
  body=$(inpod "$1" curl -s --max-time 2 "http://${IP[$2]}:8080/" || echo "BLOCKED (connection timed out)")
  printf '  %-16s -> %-16s %s\n' "$1" "$2" "$body"
done
echo; echo "\$ moatctl observe --namespace billing --last 8"; moatctl observe --namespace billing --last 8
echo; echo "\$ moatctl policy explain --from shop/frontend --to billing/api --port 8080/tcp"
moatctl policy explain --from shop/frontend --to billing/api --port 8080/tcp | sed 's/^/  /'
echo; echo "\$ moatctl policy explain --from shop/cart --to billing/api --port 8080/tcp"
moatctl policy explain --from shop/cart --to billing/api --port 8080/tcp | sed 's/^/  /'
echo; echo "\$ moatctl drops"; moatctl drops
echo; echo "\$ moatctl identities"; moatctl identities
echo; echo "\$ moatctl policy matrix -f $RUN/state --port 8080/tcp   (offline, from the manifests alone)"
moatctl policy matrix -f "$RUN/state" --port 8080/tcp | sed 's/^/  /'

echo; echo "== Lateral movement: shop/frontend may send GET / to billing/api and nothing else (HTTP rules, in the kernel)"
cat >"$RUN/state/http.yaml" <<'YAML'
apiVersion: moat.io/v1alpha1
kind: MoatNetworkPolicy
metadata: {name: api-http, namespace: billing}
spec:
  endpointSelector: {matchLabels: {'k8s:app': api}}
  ingress:
  - fromEndpoints: [{matchLabels: {'k8s:io.kubernetes.pod.namespace': shop, 'k8s:app': frontend}}]
    toPorts:
    - ports: [{port: '8080', protocol: TCP}]
      rules:
        http: [{method: GET, path: /}]
YAML
sed 's/^/  /' "$RUN/state/http.yaml"
for _ in $(seq 50); do [ "$(moatctl -o json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["policies"])')" = 4 ] && break; sleep 0.1; done
for path in / /admin /index.html/../admin; do
  out=$(inpod shop/frontend curl -s --path-as-is --max-time 2 -w ' [HTTP %{http_code}]' "http://${IP[billing/api]}:8080$path" | tr -d '\r' | tr '\n' ' ')
  printf '  shop/frontend GET %-22s %s\n' "$path" "$out"
done
echo "  (the 403 is written by the kernel's sk_skb verdict program: billing/api never sees GET /admin)"
echo; echo "\$ moatctl observe --type l7 --last 3"; moatctl observe --type l7 --last 3 | sed 's/^/  /'
echo; echo "\$ moatctl policy explain --from shop/frontend --to billing/api --port 8080/tcp --http 'GET /index.html/../admin'"
moatctl policy explain --from shop/frontend --to billing/api --port 8080/tcp --http 'GET /index.html/../admin' | sed 's/^/  /'
echo; echo "\$ moatctl drops   (HTTP refusals are counted with their reason)"; moatctl drops | grep -i -E 'reason|http' | sed 's/^/  /'

echo; echo "== Services: shop/web (ClusterIP 10.96.0.80:80 and NodePort 30080) with 3 backends"
for p in "${WEB[@]}"; do
  ip netns add $ID-${p/\//-}
  cni ADD "$p" >/dev/null
  mkdir -p "$RUN/www/${p/\//-}"; echo "hello from $p" >"$RUN/www/${p/\//-}/index.html"
  nsenter --net=/run/netns/$ID-${p/\//-} busybox httpd -f -p 8080 -h "$RUN/www/${p/\//-}" >/dev/null 2>&1 &
  PIDS+=($!)
done
cat >"$RUN/state/services.yaml" <<'YAML'
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  type: NodePort
  clusterIP: 10.96.0.80
  selector: {app: web}
  ports:
  - {name: http, port: 80, targetPort: http, nodePort: 30080}
YAML
sed 's/^/  /' "$RUN/state/services.yaml"
for _ in $(seq 50); do moatctl services | grep -q 'web-3' && break; sleep 0.1; done
echo; echo "  12 requests from shop/frontend to http://10.96.0.80/ (socket load balancer, once per connection):"
for _ in $(seq 12); do inpod shop/frontend curl -s --max-time 2 http://10.96.0.80/; done | sort | uniq -c | sed 's/^/  /'
echo; echo "  12 requests from outside the node to http://192.168.200.1:30080/ (XDP on the node's eth0):"
for _ in $(seq 12); do nsenter --net=/run/netns/$OUTSIDE curl -s --max-time 2 http://192.168.200.1:30080/; done | sort | uniq -c | sed 's/^/  /'
echo; echo "\$ moatctl services"; moatctl services
echo; echo "\$ moatctl observe --verdict translated --last 4"; moatctl observe --verdict translated --last 4

echo; echo "\$ moatctl status   (datapath counters come from the eBPF programs)"; moatctl status

echo; echo "== restarting moat-agent with a TCP connection open between two pods"
# An echo server in shop/cart and one long-lived connection to it from shop/frontend.
nsenter --net=/run/netns/$ID-shop-cart python3 -c '
import socket
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("0.0.0.0", 9000)); s.listen()
c, _ = s.accept()
while (d := c.recv(100)): c.sendall(d)' & PIDS+=($!)
sleep 0.3
nsenter --net=/run/netns/$ID-shop-frontend python3 -u -c '
import socket, sys, os, time
c = socket.create_connection((sys.argv[1], 9000), timeout=5)
def echo(m):
    c.sendall(m.encode()); print("  connection says:", c.recv(100).decode(), flush=True)
echo("before the restart")
while not os.path.exists(sys.argv[2]): time.sleep(0.1)
echo("after the restart, same connection")' "${IP[shop/cart]}" "$RUN/restarted" &
CLIENT=$!
sleep 0.5
kill "$AGENT"; wait "$AGENT" 2>/dev/null || true
echo "  agent stopped (the pod filters stay attached and the maps pinned in $PIN)"
start_agent; echo "  agent started again; it re-adopted the pinned datapath"
touch "$RUN/restarted"; wait $CLIENT
echo; echo "\$ moatctl endpoints   (re-adopted after the restart)"; moatctl endpoints
