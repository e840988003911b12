#!/usr/bin/env bash
# Side-by-side benchmarks; every figure is printed with its baseline from the same run.
#
#  1. CNI ADD+DEL latency: `moat` vs Debian's `bridge` + `host-local` plugins.
#  2. Pod-to-pod TCP throughput (iperf3) and request/response latency (moat-rr):
#     pods wired by Moat (eBPF, bpf_redirect_peer) vs the same veth/route layout with
#     no eBPF at all (the node's stack forwards).
#  3. The same pod-to-pod TCP with 1,000 NetworkPolicies and 500 identities loaded (the
#     server pod isolated, allowed by one of its rules) vs no policy, alternating rounds.
#  4. Per-packet cost of from_container (BPF_PROG_TEST_RUN): established flow, new
#     allowed flow, denied flow, vs an established flow with no policy loaded.
#  5. Policy compile time and map updates: 10,000 policies over 1,000 pods, then one
#     changed policy (incremental map updates vs full entry count).
#  6. Services: connection rate (connect, request, close) and RR latency to a ClusterIP
#     with 1, 1,000 and 10,000 services loaded — Moat's socket load balancer vs iptables
#     rules built the way kube-proxy's iptables mode builds them (KUBE-SERVICES →
#     KUBE-SVC → KUBE-SEP chains), the target being the last service.
#  7. Service update latency: a service without endpoints gets one; time until the first
#     connection succeeds — Moat (manifest change) vs iptables-restore of the same rules.
#  8. Pod churn vs pod-to-pod RR, and CNI ADD+DEL while 10,000 policies recompile.
#  9. Attach cost per pod: the two pod programs as tcx links vs legacy TC (cls_bpf, what
#     Moat uses) vs no programs: attach, then delete the veth.
# 10. HTTP rules (SECTIONS=0): wrk requests/s and p50/p99 with no HTTP policy, Moat's
#     kernel HTTP rules (10 and 1,000 rules on the port), and nginx as a sidecar proxy.
#
# Everything lives in namespaces this script creates and removes.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" -eq 0 ] || { echo "run as root" >&2; exit 1; }
bash install/bootstrap.sh >/dev/null 2>&1 || bash install/bootstrap.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --bins 2>&1 | { grep -E '^error' || true; }
B=$PWD/target/release
CYCLES=${CYCLES:-100}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-5}
ROUNDS=${ROUNDS:-3}
RR_COUNT=${RR_COUNT:-20000}
SECTIONS=${SECTIONS:-1234567890}  # e.g. SECTIONS=67 runs only the service benchmarks; 0 is section 10
want() { [[ $SECTIONS == *$1* ]]; }

ID=moatbench$$
RUN=/tmp/$ID
PIN=/sys/fs/bpf/$ID
SOCK=$RUN/agent.sock
NS=()
PIDS=()
mkdir -p "$RUN/state"
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  # iperf3 servers daemonize (-D): their pids are in pidfiles; a server whose client
  # never came is still waiting.
  for f in "$RUN"/iperf-*.pid; do
    [ -f "$f" ] || continue
    p=$(tr -d '\0' <"$f")
    [ "$(cat /proc/"$p"/comm 2>/dev/null)" = iperf3 ] && kill "$p" 2>/dev/null
  done
  for n in "${NS[@]}"; do ip netns del "$n" 2>/dev/null; done
  # A churn loop (section 8) stopped mid-cycle leaves its last pod netns.
  for n in $(ip netns list | awk '{print $1}' | grep -E "^$ID-c[0-9]+$"); do ip netns del "$n" 2>/dev/null; done
  # MOAT_LOG=moat_dataplane=debug KEEP_AGENT_LOG=/tmp/agent.log keeps the agent's log.
  [ -n "${KEEP_AGENT_LOG:-}" ] && cp "$RUN/agent.log" "$KEEP_AGENT_LOG"
  rm -rf "$PIN" "$RUN"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkns() { ip netns add "$1"; ip -n "$1" link set lo up; NS+=("$1"); }
# A one-shot iperf3 server in netns $1 (its pidfile lets cleanup end it if unused).
iperf_server() { nsenter --net=/run/netns/"$1" iperf3 -s -D -1 --pidfile "$RUN/iperf-$1.pid" >/dev/null 2>&1 || true; }
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
median() { python3 -c "import statistics,sys; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }
wait_policies() { # count
  for _ in $(seq 300); do
    n=$("$B/moatctl" --socket "$SOCK" -o json status | json '["policies"]')
    [ "$n" = "$1" ] && return 0; sleep 0.1
  done
  echo "agent did not apply $1 policies" >&2; return 1
}

# ---------------------------------------------------------------- node with Moat
mkns $ID-moat
nsenter --net=/run/netns/$ID-moat "$B/moat-agent" --state-dir "$RUN/state" --socket "$SOCK" --pin-dir "$PIN" \
  --data-dir "$RUN/data" --pod-cidr 10.98.0.0/24 >"$RUN/agent.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.1; done

printf '{"cniVersion":"1.1.0","name":"moat","type":"moat","socket":"%s"}' "$SOCK" >"$RUN/moat.conf"

if want 1; then
echo "== 1. CNI ADD+DEL latency ($CYCLES cycles each, interleaved, one plugin process per call)"
printf '{"cniVersion":"1.0.0","name":"bridge-bench","type":"bridge","bridge":"cni-bench0","isGateway":true,"ipMasq":false,
  "ipam":{"type":"host-local","dataDir":"%s/hl","ranges":[[{"subnet":"10.97.0.0/16"}]]}}' "$RUN" >"$RUN/bridge.conf"
mkns $ID-bridge
# One cycle of each plugin in turn: both meet the same machine state (measured back to
# back, bridge's own DEL p50 moved between 23 and 35 ms from one run to the next).
both=$("$B/moat-cni-latency" --interleave "$CYCLES" $ID-moat "$B/moat" "$RUN/moat.conf" \
  $ID-bridge /usr/lib/cni/bridge "$RUN/bridge.conf")
moat_lat=$(echo "$both" | sed -n 1p); bridge_lat=$(echo "$both" | sed -n 2p)
mp50=$(echo "$moat_lat" | json '["p50_ms"]'); mp99=$(echo "$moat_lat" | json '["p99_ms"]')
bp50=$(echo "$bridge_lat" | json '["p50_ms"]'); bp99=$(echo "$bridge_lat" | json '["p99_ms"]')
printf '  %-22s p50 %7.2f ms   p99 %7.2f ms\n' "moat" "$mp50" "$mp99" "bridge+host-local" "$bp50" "$bp99"
printf '  ratio moat/bridge:     p50 %s   p99 %s   (< 1 means moat is faster)\n' "$(ratio "$mp50" "$bp50")" "$(ratio "$mp99" "$bp99")"
printf '  ADD p50 / DEL p50:     moat %s / %s ms   bridge %s / %s ms\n' "$(echo "$moat_lat" | json '["add_p50_ms"]')" \
  "$(echo "$moat_lat" | json '["del_p50_ms"]')" "$(echo "$bridge_lat" | json '["add_p50_ms"]')" "$(echo "$bridge_lat" | json '["del_p50_ms"]')"

fi
# ---------------------------------------------------------------- pods
# Moat pods, through the real plugin.
cni_add() { # netns-name container-id pod-name (the netns exists already)
  nsenter --net=/run/netns/$ID-moat env CNI_COMMAND=ADD CNI_CONTAINERID="$2" CNI_NETNS=/run/netns/$1 CNI_IFNAME=eth0 \
    CNI_PATH=/usr/lib/cni CNI_ARGS="K8S_POD_NAMESPACE=bench;K8S_POD_NAME=$3" "$B/moat" <"$RUN/moat.conf" \
    | json '["ips"][0]["address"].split("/")[0]'
}
mkns $ID-ma; mkns $ID-mb
MA=$(cni_add $ID-ma bench-a a); MB=$(cni_add $ID-mb bench-b b)

# Plain pods: the identical layout (veth, /32, link-local gateway, permanent neighbours,
# host /32 routes) wired by hand, no eBPF: the node's stack forwards.
mkns $ID-plain
ip netns exec $ID-plain sysctl -qw net.ipv4.ip_forward=1
plain_pod() { # name ip index
  local pod=$ID-$1 host=pl$3 pmac=0a:00:00:00:00:0$3 hmac=0e:00:00:00:00:0$3
  mkns "$pod"
  ip -n $ID-plain link add $host address $hmac type veth peer name eth0 address $pmac netns "$pod"
  ip -n "$pod" addr add "$2/32" dev eth0; ip -n "$pod" link set eth0 up
  ip -n "$pod" route add 169.254.1.1/32 dev eth0 scope link; ip -n "$pod" route add default via 169.254.1.1 dev eth0
  ip -n "$pod" neigh replace 169.254.1.1 lladdr $hmac dev eth0 nud permanent
  ip -n $ID-plain link set $host up
  ip -n $ID-plain route add "$2/32" dev $host scope link
  ip -n $ID-plain neigh replace "$2" lladdr $pmac dev $host nud permanent
}
plain_pod pa 10.96.0.1 1; plain_pod pb 10.96.0.2 2
PA=10.96.0.1; PB=10.96.0.2

for srv in $ID-mb $ID-pb; do
  nsenter --net=/run/netns/$srv "$B/moat-rr" server 7100 & PIDS+=($!)
done
sleep 0.5

if want 2; then
echo
echo "== 2. pod-to-pod TCP, same node ($ROUNDS rounds, alternating; medians)"
m_tp=(); p_tp=(); m_rr=(); p_rr=(); m_p99=(); p_p99=()
for r in $(seq "$ROUNDS"); do
  for kind in moat plain; do
    if [ $kind = moat ]; then c=$ID-ma; s=$ID-mb; ip=$MB; else c=$ID-pa; s=$ID-pb; ip=$PB; fi
    iperf_server "$s"
    sleep 0.3
    bps=$(nsenter --net=/run/netns/$c iperf3 -c "$ip" -t "$SECONDS_PER_RUN" -J | json '["end"]["sum_received"]["bits_per_second"]')
    rr=$(nsenter --net=/run/netns/$c "$B/moat-rr" client "$ip" 7100 "$RR_COUNT")
    mean=$(echo "$rr" | json '["mean_us"]'); p99=$(echo "$rr" | json '["p99_us"]')
    if [ $kind = moat ]; then m_tp+=("$bps"); m_rr+=("$mean"); m_p99+=("$p99"); else p_tp+=("$bps"); p_rr+=("$mean"); p_p99+=("$p99"); fi
  done
done
mt=$(median "${m_tp[@]}"); pt=$(median "${p_tp[@]}")
mr=$(median "${m_rr[@]}"); pr=$(median "${p_rr[@]}")
m9=$(median "${m_p99[@]}"); p9=$(median "${p_p99[@]}")
printf '  %-28s %10s %14s %12s\n' "" "Gbit/s" "RR mean (us)" "RR p99 (us)"
printf '  %-28s %10.2f %14.2f %12.2f\n' "moat (eBPF redirect_peer)" "$(python3 -c "print($mt/1e9)")" "$mr" "$m9"
printf '  %-28s %10.2f %14.2f %12.2f\n' "plain veth + routes" "$(python3 -c "print($pt/1e9)")" "$pr" "$p9"
printf '  ratio moat/plain: throughput %s (> 1 is better), RR mean %s, RR p99 %s (< 1 is better)\n' \
  "$(ratio "$mt" "$pt")" "$(ratio "$mr" "$pr")" "$(ratio "$m9" "$p9")"
fi

if want 3; then
# ---------------------------------------------------------------- 3. policy at scale
# 500 identities: the two bench pods plus 498 pods elsewhere (status.podIP); 1,000
# policies: 500 isolate the server (app=server) with an allow from some other app on some
# port, 499 select other apps, and one allows the client on the bench ports.
gen_policies() { # file
  {
    printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n'
    printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: bench, labels: {app: client}}\nspec: {containers: [{name: c}]}\n---\n'
    printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: bench, labels: {app: server}}\nspec: {containers: [{name: c}]}\n---\n'
    for i in $(seq 1 498); do
      printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: p%d, namespace: bench, labels: {app: app%d}}\nspec: {containers: [{name: c}]}\nstatus: {podIP: 10.99.%d.%d}\n---\n' \
        "$i" "$i" $((i / 200)) $((i % 200 + 1))
    done
    for i in $(seq 1 999); do
      if [ $((i % 2)) -eq 0 ]; then sel=server; else sel=app$((i % 498 + 1)); fi
      printf 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: np%d, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: %s}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: app%d}}\n    ports:\n    - {port: %d}\n---\n' \
        "$i" "$sel" $(((i * 7) % 498 + 1)) $((1000 + i))
    done
    printf 'apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: server-from-client, namespace: bench}\nspec:\n  podSelector: {matchLabels: {app: server}}\n  ingress:\n  - from:\n    - podSelector: {matchLabels: {app: client}}\n    ports:\n    - {port: 5201}\n    - {port: 7100}\n---\n'
  } >"$1"
}
gen_policies "$RUN/policies.yaml"
echo
echo "== 3. pod-to-pod TCP with 1,000 policies / 500 identities vs none ($ROUNDS rounds, alternating; medians)"
n_tp=(); y_tp=(); n_rr=(); y_rr=(); n_p99=(); y_p99=()
for r in $(seq "$ROUNDS"); do
  for kind in none loaded; do
    if [ $kind = loaded ]; then cp "$RUN/policies.yaml" "$RUN/state/"; wait_policies 1000
    else rm -f "$RUN/state/policies.yaml"; wait_policies 0; fi
    iperf_server "$ID-mb"
    sleep 0.3
    bps=$(nsenter --net=/run/netns/$ID-ma iperf3 -c "$MB" -t "$SECONDS_PER_RUN" -J | json '["end"]["sum_received"]["bits_per_second"]')
    rr=$(nsenter --net=/run/netns/$ID-ma "$B/moat-rr" client "$MB" 7100 "$RR_COUNT")
    mean=$(echo "$rr" | json '["mean_us"]'); p99=$(echo "$rr" | json '["p99_us"]')
    if [ $kind = loaded ]; then y_tp+=("$bps"); y_rr+=("$mean"); y_p99+=("$p99"); else n_tp+=("$bps"); n_rr+=("$mean"); n_p99+=("$p99"); fi
  done
done
cp "$RUN/policies.yaml" "$RUN/state/"; wait_policies 1000
"$B/moatctl" --socket "$SOCK" status | grep -E "Policy|Tracked" | sed 's/^/  /'
yt=$(median "${y_tp[@]}"); nt=$(median "${n_tp[@]}")
yr=$(median "${y_rr[@]}"); nr=$(median "${n_rr[@]}")
y9=$(median "${y_p99[@]}"); n9=$(median "${n_p99[@]}")
printf '  %-28s %10s %14s %12s\n' "" "Gbit/s" "RR mean (us)" "RR p99 (us)"
printf '  %-28s %10.2f %14.2f %12.2f\n' "1,000 policies loaded" "$(python3 -c "print($yt/1e9)")" "$yr" "$y9"
printf '  %-28s %10.2f %14.2f %12.2f\n' "no policy" "$(python3 -c "print($nt/1e9)")" "$nr" "$n9"
printf '  ratio loaded/none: throughput %s (goal >= 0.97), RR mean %s, RR p99 %s (goal <= 1.03)\n' \
  "$(ratio "$yt" "$nt")" "$(ratio "$yr" "$nr")" "$(ratio "$y9" "$n9")"
fi

if want 4; then
echo
echo "== 4. per-packet cost of from_container (BPF_PROG_TEST_RUN)"
"$B/moat-bench-datapath" 1000 500 20000 | sed 's/^/  /'
fi

if want 5; then
echo
echo "== 5. policy compile: 10,000 policies over 1,000 pods, then one changed policy"
"$B/moat-policy-compile" | sed 's/^/  /'
fi

# ---------------------------------------------------------------- 6. services at scale
# The server answers in CONN_CLIENTS worker threads, each serving one connection at a
# time (no thread per connection, so the figures show the datapath). The rate is taken
# twice: one sequential client (latency-bound: each connection waits for the last) and
# CONN_CLIENTS parallel clients (the node's capacity for new connections: what a busy
# node's CPU can do, where a longer iptables walk costs CPU that the rest needs).
SVC_PORT=7200
CONN_CLIENTS=${CONN_CLIENTS:-4}
for srv in $ID-mb $ID-pb; do
  nsenter --net=/run/netns/$srv "$B/moat-connrate" serve $SVC_PORT "$CONN_CLIENTS" & PIDS+=($!)
done
sleep 0.3
vip_of() { echo "10.112.$(($1 / 250)).$(($1 % 250 + 1))"; }
gen_services() { # N file [selector-of-the-last]
  local n=$1 last_sel=${3:-server}
  {
    for i in $(seq 1 "$n"); do
      sel=server; [ "$i" -eq "$n" ] && sel=$last_sel
      printf 'apiVersion: v1\nkind: Service\nmetadata: {name: svc-%d, namespace: bench}\nspec:\n  clusterIP: %s\n  selector: {app: %s}\n  ports: [{port: %d, targetPort: %d}]\n---\n' \
        "$i" "$(vip_of "$i")" "$sel" $SVC_PORT $SVC_PORT
    done
  } >"$2"
}
gen_iptables() { # N file [no-endpoint-for-the-last]
  local n=$1 empty=${3:-}
  {
    echo '*nat'
    echo ':PREROUTING ACCEPT [0:0]'; echo ':INPUT ACCEPT [0:0]'; echo ':OUTPUT ACCEPT [0:0]'; echo ':POSTROUTING ACCEPT [0:0]'
    echo ':KUBE-SERVICES - [0:0]'; echo ':KUBE-MARK-MASQ - [0:0]'; echo ':KUBE-POSTROUTING - [0:0]'
    for i in $(seq 1 "$n"); do printf ':KUBE-SVC-%016d - [0:0]\n:KUBE-SEP-%016d - [0:0]\n' "$i" "$i"; done
    echo '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    echo '-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    echo '-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING'
    echo '-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000'
    echo '-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN'
    echo '-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0'
    echo '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE'
    for i in $(seq 1 "$n"); do
      [ -n "$empty" ] && [ "$i" -eq "$n" ] && continue
      printf -- '-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment "bench/svc-%d cluster IP" -m tcp --dport %d -j KUBE-SVC-%016d\n' "$(vip_of "$i")" "$i" $SVC_PORT "$i"
      printf -- '-A KUBE-SVC-%016d -m comment --comment "bench/svc-%d -> %s:%d" -j KUBE-SEP-%016d\n' "$i" "$i" "$PB" $SVC_PORT "$i"
      printf -- '-A KUBE-SEP-%016d -s %s/32 -m comment --comment "bench/svc-%d" -j KUBE-MARK-MASQ\n' "$i" "$PB" "$i"
      printf -- '-A KUBE-SEP-%016d -p tcp -m comment --comment "bench/svc-%d" -m tcp -j DNAT --to-destination %s:%d\n' "$i" "$i" "$PB" $SVC_PORT
    done
    echo 'COMMIT'
    echo '*filter'
    echo ':INPUT ACCEPT [0:0]'; echo ':FORWARD ACCEPT [0:0]'; echo ':OUTPUT ACCEPT [0:0]'; echo ':KUBE-SERVICES - [0:0]'
    echo '-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    echo '-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES'
    if [ -n "$empty" ]; then
      printf -- '-A KUBE-SERVICES -d %s/32 -p tcp -m comment --comment "bench/svc-%d has no endpoints" -m tcp --dport %d -j REJECT --reject-with icmp-port-unreachable\n' "$(vip_of "$n")" "$n" $SVC_PORT
    fi
    echo 'COMMIT'
  } >"$2"
}
pods_manifest() {
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n'
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: bench, labels: {app: client}}\nspec: {containers: [{name: c}]}\n---\n'
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: bench, labels: {app: server}}\nspec: {containers: [{name: c}]}\n---\n'
}
service_count() { "$B/moatctl" --socket "$SOCK" -o json services | json '.__len__()'; }
wait_services() { # N
  for _ in $(seq 600); do [ "$(service_count)" = "$1" ] && return 0; sleep 0.1; done
  echo "agent did not apply $1 services" >&2; return 1
}
# Sections 6 and 7 share these: no policies, pods labelled for the services' selectors.
if want 6 || want 7; then
  rm -f "$RUN/state/policies.yaml"
  pods_manifest >"$RUN/state/pods.yaml"
fi
if want 6; then
CONN_SECONDS=${CONN_SECONDS:-3}
echo
echo "== 6. connections to a ClusterIP with N services loaded (target: the last service; ${CONN_SECONDS}s each)"
printf '  %-8s %-9s %14s %16s %13s %12s\n' "services" "" "conn/s 1 client" "conn/s $CONN_CLIENTS clients" "RR mean (us)" "RR p99 (us)"
declare -A SEQ PAR
measure() { # kind client-netns target services
  local seq par rr
  seq=$(nsenter --net=/run/netns/$2 "$B/moat-connrate" rate "$3" $SVC_PORT "$CONN_SECONDS" | json '["conns_per_sec"]')
  par=$(nsenter --net=/run/netns/$2 "$B/moat-connrate" rate "$3" $SVC_PORT "$CONN_SECONDS" "$CONN_CLIENTS" | json '["conns_per_sec"]')
  rr=$(nsenter --net=/run/netns/$2 "$B/moat-rr" client "$3" $SVC_PORT "$RR_COUNT")
  SEQ[$1$4]=$seq; PAR[$1$4]=$par
  printf '  %-8s %-9s %14s %16s %13s %12s\n' "$4" "$1" "$seq" "$par" "$(echo "$rr" | json '["mean_us"]')" "$(echo "$rr" | json '["p99_us"]')"
}
for n in 1 1000 10000; do
  gen_services "$n" "$RUN/state/services.yaml"; wait_services "$n"
  measure moat $ID-ma "$(vip_of "$n")" "$n"
  gen_iptables "$n" "$RUN/ipt.rules"; ip netns exec $ID-plain iptables-restore <"$RUN/ipt.rules"
  measure iptables $ID-pa "$(vip_of "$n")" "$n"
done
printf '  1 client:  moat at 10,000 / moat at 1: %s (goal >= 0.95);  moat / iptables at 10,000: %s (goal >= 3)\n' \
  "$(ratio "${SEQ[moat10000]}" "${SEQ[moat1]}")" "$(ratio "${SEQ[moat10000]}" "${SEQ[iptables10000]}")"
printf '  %s clients: moat at 10,000 / moat at 1: %s (goal >= 0.95);  moat / iptables at 10,000: %s (goal >= 3)\n' "$CONN_CLIENTS" \
  "$(ratio "${PAR[moat10000]}" "${PAR[moat1]}")" "$(ratio "${PAR[moat10000]}" "${PAR[iptables10000]}")"
fi

if want 7; then

# ---------------------------------------------------------------- 7. update latency
echo
echo "== 7. service update latency with 1,000 services: a service without endpoints gets one"
gen_services 1000 "$RUN/state/services.yaml" nobody; wait_services 1000
sleep 1
t=$(vip_of 1000)
# The new manifest is written aside and moved in at once (as `kubectl apply` changes an
# object atomically); only the move is timed.
gen_services 1000 "$RUN/services-new.yaml"
nsenter --net=/run/netns/$ID-ma "$B/moat-connrate" wait "$t" $SVC_PORT 10000 >"$RUN/wait-moat" &
WAITER=$!; sleep 0.05
mv "$RUN/services-new.yaml" "$RUN/state/services.yaml"
wait $WAITER || true
gen_iptables 1000 "$RUN/ipt.rules" empty; ip netns exec $ID-plain iptables-restore <"$RUN/ipt.rules"
gen_iptables 1000 "$RUN/ipt-new.rules"
nsenter --net=/run/netns/$ID-pa "$B/moat-connrate" wait "$t" $SVC_PORT 10000 >"$RUN/wait-ipt" &
WAITER=$!; sleep 0.05
ip netns exec $ID-plain iptables-restore <"$RUN/ipt-new.rules"
wait $WAITER || true
# The waiters start 50 ms before the change; subtract that head start.
mw=$(python3 -c "import json; print(round(json.load(open('$RUN/wait-moat'))['ms'] - 50, 1))")
iw=$(python3 -c "import json; print(round(json.load(open('$RUN/wait-ipt'))['ms'] - 50, 1))")
printf '  moat (manifest change → socket LB maps): %s ms;  iptables-restore of the same rules: %s ms;  ratio %s\n' \
  "$mw" "$iw" "$(ratio "$mw" "$iw")"

fi
if want 8; then
# ---------------------------------------------------------------- 8. churn and ADD under load
echo
echo "== 8. pod churn vs established flows; CNI ADD+DEL while the agent recompiles 10,000 policies"
rm -f "$RUN/state/"*.yaml
# Churn: pods added and deleted as fast as the plugin goes (about 10/s here), in their own
# netns; PIDs of the loop are killed at the end of each measurement.
churn_loop() {
  local i=0
  while :; do
    i=$((i + 1)); local n=$ID-c$i
    ip netns add "$n" 2>/dev/null || continue
    nsenter --net=/run/netns/$ID-moat env CNI_COMMAND=ADD CNI_CONTAINERID="churn-$i" CNI_NETNS=/run/netns/$n CNI_IFNAME=eth0 \
      CNI_PATH=/usr/lib/cni CNI_ARGS="K8S_POD_NAMESPACE=churn;K8S_POD_NAME=c$i" "$B/moat" <"$RUN/moat.conf" >/dev/null 2>&1
    nsenter --net=/run/netns/$ID-moat env CNI_COMMAND=DEL CNI_CONTAINERID="churn-$i" CNI_NETNS=/run/netns/$n CNI_IFNAME=eth0 \
      CNI_PATH=/usr/lib/cni "$B/moat" <"$RUN/moat.conf" >/dev/null 2>&1
    ip netns del "$n" 2>/dev/null
    # Replaced, not rewritten: a reader never sees the file empty.
    echo "$i" >"$RUN/churned.tmp" && mv "$RUN/churned.tmp" "$RUN/churned"
  done
}
rr_once() { nsenter --net=/run/netns/$ID-ma "$B/moat-rr" client "$MB" 7100 "$RR_COUNT"; }
c_rr=(); q_rr=(); c_p99=(); q_p99=(); rates=()
for r in $(seq "$ROUNDS"); do
  rr=$(rr_once); q_rr+=("$(echo "$rr" | json '["mean_us"]')"); q_p99+=("$(echo "$rr" | json '["p99_us"]')")
  echo 0 >"$RUN/churned"
  churn_loop & CHURN=$!; PIDS+=($CHURN)
  sleep 1; start=$(cat "$RUN/churned"); t0=$(date +%s.%N)
  rr=$(rr_once); c_rr+=("$(echo "$rr" | json '["mean_us"]')"); c_p99+=("$(echo "$rr" | json '["p99_us"]')")
  t1=$(date +%s.%N); end=$(cat "$RUN/churned")
  kill $CHURN 2>/dev/null; wait $CHURN 2>/dev/null || true
  rates+=("$(python3 -c "print(($end - $start) / ($t1 - $t0))")")
done
printf '  pod-to-pod RR with churn (%.1f pods added+deleted/s): mean %s us, p99 %s us; without: mean %s us, p99 %s us\n' \
  "$(median "${rates[@]}")" "$(median "${c_rr[@]}")" "$(median "${c_p99[@]}")" "$(median "${q_rr[@]}")" "$(median "${q_p99[@]}")"
printf '  ratio churn/none: RR mean %s, RR p99 %s (new pods do not make established flows re-check policy)\n' \
  "$(ratio "$(median "${c_rr[@]}")" "$(median "${q_rr[@]}")")" "$(ratio "$(median "${c_p99[@]}")" "$(median "${q_p99[@]}")")"

# ADD+DEL while policy recompiles: two versions of 10,000 policies over 1,000 pods are
# moved into the state dir in turn, each move a full recompile in the node owner.
python3 - "$RUN" <<'PY'
import sys
run = sys.argv[1]
for v in (0, 1):
    with open(f"{run}/big{v}.yaml", "w") as f:
        f.write("apiVersion: v1\nkind: Namespace\nmetadata: {name: big}\n---\n")
        for i in range(1000):
            f.write(f"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: big, labels: {{app: a{i}}}}}\n"
                    f"spec: {{containers: [{{name: c}}]}}\nstatus: {{podIP: 10.95.{i // 250}.{i % 250 + 1}}}\n---\n")
        for i in range(10000):
            f.write(f"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: big}}\n"
                    f"spec:\n  podSelector: {{matchLabels: {{app: a{(i * 7 + v) % 1000}}}}}\n  ingress:\n"
                    f"  - from:\n    - podSelector: {{matchLabels: {{app: a{(i * 13) % 1000}}}}}\n"
                    f"    ports:\n    - {{port: {1000 + i % 5000}}}\n---\n")
PY
LAT_CYCLES=${LAT_CYCLES:-40}
idle=$(nsenter --net=/run/netns/$ID-moat "$B/moat-cni-latency" "$B/moat" "$RUN/moat.conf" "$LAT_CYCLES")
recompile_loop() {
  local v=0
  while :; do cp "$RUN/big$v.yaml" "$RUN/big.tmp"; mv "$RUN/big.tmp" "$RUN/state/big.yaml"; v=$((1 - v)); sleep 0.3; done
}
cp "$RUN/big0.yaml" "$RUN/state/big.yaml"; wait_policies 10000 || true
recompile_loop & LOOP=$!; PIDS+=($LOOP)
sleep 1
loaded=$(nsenter --net=/run/netns/$ID-moat "$B/moat-cni-latency" "$B/moat" "$RUN/moat.conf" "$LAT_CYCLES")
kill $LOOP 2>/dev/null; wait $LOOP 2>/dev/null || true
ip50=$(echo "$idle" | json '["p50_ms"]'); ip99=$(echo "$idle" | json '["p99_ms"]')
lp50=$(echo "$loaded" | json '["p50_ms"]'); lp99=$(echo "$loaded" | json '["p99_ms"]')
printf '  CNI ADD+DEL idle: p50 %s ms, p99 %s ms;  while recompiling 10,000 policies: p50 %s ms, p99 %s ms\n' "$ip50" "$ip99" "$lp50" "$lp99"
printf '  ratio loaded/idle: p50 %s, p99 %s (goal p99 <= 2)\n' "$(ratio "$lp50" "$ip50")" "$(ratio "$lp99" "$ip99")"
rm -f "$RUN/state/big.yaml"
fi
if want 9; then
echo "== 9. Attach cost per pod: tcx links vs legacy TC (cls_bpf) vs no programs (${CYCLES} veths each)"
mkns $ID-attach
nsenter --net=/run/netns/$ID-attach "$B/moat-bench-attach" "$CYCLES"
fi
if want 0; then
# ---------------------------------------------------------------- 10. HTTP rules
# wrk from pod a to nginx in pod b: no HTTP policy, Moat's kernel HTTP rules (10 and 1,000
# rules on the port), and nginx as a sidecar reverse proxy enforcing the same rules (the
# proxy design of Cilium/Calico's Envoy). Alternating rounds, medians.
echo "== 10. HTTP rules: wrk requests/s and latency — none vs Moat (10, 1,000 rules) vs nginx proxy ($ROUNDS rounds)"
rm -f "$RUN/state/"*.yaml
WRK_CONN=${WRK_CONN:-16}
mkdir -p "$RUN/nginx-tmp"
gen_nginx() { # rules-count
  local locs="" i
  for i in $(seq 0 $(($1 - 2))); do locs+="    location = /api/v1/items/$i { proxy_pass http://be; }"$'\n'; done
  cat <<CONF
worker_processes 1;
pid $RUN/nginx.pid;
error_log $RUN/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $RUN/nginx-tmp/body; proxy_temp_path $RUN/nginx-tmp/proxy;
  fastcgi_temp_path $RUN/nginx-tmp/fcgi; uwsgi_temp_path $RUN/nginx-tmp/uwsgi; scgi_temp_path $RUN/nginx-tmp/scgi;
  keepalive_requests 1000000;
  upstream be { server 127.0.0.1:8090; keepalive 64; }
  server { listen 8090; location / { return 200 "ok\n"; } }
  server {
    listen 8091;
    proxy_http_version 1.1; proxy_set_header Connection "";
    location = / { proxy_pass http://be; }
$locs    location / { return 403; }
  }
}
CONF
}
gen_http_policy() { # rules-count
  printf 'apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n---\n'
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: bench, labels: {app: client}}\nspec: {containers: [{name: c}]}\n---\n'
  printf 'apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: bench, labels: {app: server}}\nspec: {containers: [{name: c}]}\n---\n'
  printf "apiVersion: moat.io/v1alpha1\nkind: MoatNetworkPolicy\nmetadata: {name: http, namespace: bench}\nspec:\n  endpointSelector: {matchLabels: {app: server}}\n  ingress:\n  - fromEndpoints: [{matchLabels: {app: client}}]\n    toPorts:\n    - ports: [{port: '8090', protocol: TCP}]\n      rules:\n        http:\n        - {method: GET, path: /}\n"
  local i
  for i in $(seq 0 $(($1 - 2))); do printf "        - {method: GET, path: /api/v1/items/%d}\n" "$i"; done
}
gen_nginx 10 >"$RUN/nginx.conf"
nsenter --net=/run/netns/$ID-mb nginx -c "$RUN/nginx.conf" -g 'daemon off;' & PIDS+=($!)
for _ in $(seq 50); do nsenter --net=/run/netns/$ID-mb curl -s -o /dev/null http://127.0.0.1:8090/ && break; sleep 0.1; done
gen_http_policy 10 >"$RUN/http10.yaml"; gen_http_policy 1000 >"$RUN/http1000.yaml"
generation() { "$B/moatctl" --socket "$SOCK" -o json status | json '["stateGeneration"]'; }
set_http() { # file | none
  local before; before=$(generation)
  if [ "$1" = none ]; then rm -f "$RUN/state/http.yaml"; else cp "$1" "$RUN/state/http.yaml"; fi
  for _ in $(seq 100); do [ "$(generation)" -gt "$before" ] && return 0; sleep 0.1; done
}
# wrk's summary → "rps p50_us p99_us"
wrk_run() { # url
  nsenter --net=/run/netns/$ID-ma wrk -t1 -c"$WRK_CONN" -d"${SECONDS_PER_RUN}s" --latency "$1" | python3 -c '
import re, sys
t = sys.stdin.read()
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", t).group(1))
def us(p):
    v, u = re.search(r"\s%s%%\s+([\d.]+)(us|ms|s)" % p, t).groups()
    return float(v) * {"us": 1, "ms": 1e3, "s": 1e6}[u]
bad = re.search(r"Non-2xx or 3xx responses: (\d+)", t)
if bad: sys.exit("wrk got %s non-2xx answers" % bad.group(1))
print(rps, us(50), us(99))'
}
declare -A RPS P50 P99
for r in $(seq "$ROUNDS"); do
  for kind in none moat10 moat1000 proxy; do
    case $kind in
      none) set_http none; url="http://$MB:8090/" ;;
      moat10) set_http "$RUN/http10.yaml"; url="http://$MB:8090/" ;;
      moat1000) set_http "$RUN/http1000.yaml"; url="http://$MB:8090/" ;;
      proxy) set_http none; url="http://$MB:8091/" ;;
    esac
    read -r rps p50 p99 <<<"$(wrk_run "$url")"
    RPS[$kind]+="$rps "; P50[$kind]+="$p50 "; P99[$kind]+="$p99 "
  done
done
set_http "$RUN/http10.yaml"
denied=$(nsenter --net=/run/netns/$ID-ma curl -s -o /dev/null -w '%{http_code}' "http://$MB:8090/admin")
printf '  %-30s %12s %10s %10s\n' "" "requests/s" "p50 (us)" "p99 (us)"
for kind in none moat10 moat1000 proxy; do
  case $kind in none) label="no HTTP policy";; moat10) label="Moat, 10 rules (kernel)";; moat1000) label="Moat, 1,000 rules (kernel)";; proxy) label="nginx proxy, 10 rules";; esac
  eval "m_rps_$kind=$(median ${RPS[$kind]})"; eval "m_p50_$kind=$(median ${P50[$kind]})"; eval "m_p99_$kind=$(median ${P99[$kind]})"
  eval printf "'  %-30s %12.0f %10.0f %10.0f\n'" "'$label'" "\$m_rps_$kind" "\$m_p50_$kind" "\$m_p99_$kind"
done
printf '  ratio Moat/none requests/s: 10 rules %s, 1,000 rules %s (goal >= 0.95)\n' "$(ratio "$m_rps_moat10" "$m_rps_none")" "$(ratio "$m_rps_moat1000" "$m_rps_none")"
printf '  added p99: 10 rules %.0f us, 1,000 rules %.0f us (goal <= 50 us)\n' "$(python3 -c "print($m_p99_moat10-$m_p99_none)")" "$(python3 -c "print($m_p99_moat1000-$m_p99_none)")"
printf '  ratio Moat (10 rules)/nginx proxy requests/s: %s (goal >= 3; both on the same 2 CPUs)\n' "$(ratio "$m_rps_moat10" "$m_rps_proxy")"
printf '  GET /admin under the 10 rules: HTTP %s from the kernel\n' "$denied"
rm -f "$RUN/state/http.yaml"
fi
