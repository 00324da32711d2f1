#!/usr/bin/env bash
# First checks on a real K3s cluster, for what pg_ops verified only offline / against the fake API
# (docs/architecture/kubernetes.md). Read-only except one throw-away ConfigMap in the namespace.
#   scripts/check-k8s-cluster.sh [NAMESPACE] [CLUSTER]      (defaults: postgresql homelab)
set -u
NS=${1:-postgresql}; CLUSTER=${2:-homelab}; SA=system:serviceaccount:dagster:pg-ops
fail=0
check() { local what=$1; shift; if "$@" >/dev/null 2>&1; then echo "ok    $what"; else echo "FAIL  $what"; fail=1; fi; }

check "kubectl reaches the API server" kubectl version
check "server-side dry run of the rendered manifests" kubectl apply --dry-run=server --server-side -k "deploy/kubernetes/$CLUSTER"
check "ServiceMonitor/PrometheusRule CRDs installed" kubectl get crd servicemonitors.monitoring.coreos.com prometheusrules.monitoring.coreos.com
check "MetalLB CRDs installed" kubectl get crd ipaddresspools.metallb.io l2advertisements.metallb.io
BACKUP_SECRET=$(sed -n 's/^ *credentials_secret: *\([^ #]*\).*/\1/p' "deploy/clusters/$CLUSTER.yaml")
for verb in "get pods/$CLUSTER-0 --subresource=exec" "create pods/$CLUSTER-0 --subresource=exec" \
            "get pods" "patch pods/$CLUSTER-0" "delete pods" \
            "get configmaps/$CLUSTER-pg-ops-state" "update configmaps/$CLUSTER-pg-ops-state" \
            "get secrets/$CLUSTER-credentials" "update secrets/$CLUSTER-credentials" \
            ${BACKUP_SECRET:+"get secrets/$BACKUP_SECRET"} "delete persistentvolumeclaims/data-$CLUSTER-0"; do
    check "pg-ops may $verb" kubectl auth can-i $verb -n "$NS" --as "$SA"
done
check "pg-ops may NOT read other Secrets" bash -c "! kubectl auth can-i list secrets -n $NS --as $SA"
check "pg-ops may NOT create pods where the Secrets are (mounting reads them)" bash -c "! kubectl auth can-i create pods -n $NS --as $SA"
DRILLS=$(sed -n 's/^ *drill_namespace: *\([^ #]*\).*/\1/p' "deploy/clusters/$CLUSTER.yaml"); DRILLS=${DRILLS:-$NS-drills}
check "drill namespace $DRILLS exists" kubectl get namespace "$DRILLS"
for verb in "create pods" "delete pods" "create secrets" "delete secrets"; do
    check "pg-ops may $verb in $DRILLS (restore drills)" kubectl auth can-i $verb -n "$DRILLS" --as "$SA"
done
check "pg-ops may NOT change the Git-owned config" bash -c "! kubectl auth can-i patch configmaps/$CLUSTER-config -n $NS --as $SA"
check "K3s ServiceLB disabled (no svclb pods)" bash -c "! kubectl -n kube-system get pods -l svccontroller.k3s.cattle.io/svcname -o name | grep -q ."
check "a drain cannot evict the primary (PDB $CLUSTER-primary)" kubectl -n "$NS" get pdb "$CLUSTER-primary"
# ConfigMap volume refresh: how long a mounted ConfigMap takes to change in a pod (the window in
# which a demoted primary still reads the old desired state). Needs the cluster running.
POD="$CLUSTER-0"
if kubectl get pod -n "$NS" "$POD" >/dev/null 2>&1; then
    check "member script and probe mounted (no subPath)" kubectl exec -n "$NS" "$POD" -c postgres -- test -x /opt/pg-ops/probe.sh
    check "readiness probe passes on $POD" kubectl exec -n "$NS" "$POD" -c postgres -- bash /opt/pg-ops/probe.sh ready 60 67108864
    check "postgres runs as uid 999" bash -c "[ \"\$(kubectl exec -n $NS $POD -c postgres -- id -u)\" = 999 ]"
    check "exporter serves pg_up" bash -c "kubectl exec -n $NS $POD -c postgres-exporter -- wget -qO- localhost:9187/metrics | grep -q '^pg_up 1'"
    check "exporter reads pg_ops status table" bash -c "kubectl exec -n $NS $POD -c postgres-exporter -- wget -qO- localhost:9187/metrics | grep -q '^pg_ops_status_timestamp_seconds'"
fi
echo "manual: from a host outside 192.168.10.0/24, psql to 192.168.10.100:5432 must time out (LB source ranges + NetworkPolicy)."
echo "manual: time a desired-state ConfigMap change until 'cat /etc/pg-ops/state/desired-state' shows it in a pod (kubelet sync, typically 60-90 s)."
exit $fail
