#!/usr/bin/env bash
# Offline checks of the Kubernetes manifests: they render with kustomize, every object of the
# base validates against the Kubernetes OpenAPI schemas (strict: no unknown fields), and the
# alert rules of the monitoring overlay pass promtool.
set -euo pipefail
cd "$(dirname "$0")/.."
K8S_VERSION=1.33.0
python3 -c 'import kubernetes_validate' 2>/dev/null || pip install -q 'kubernetes-validate==1.37.0'
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
kubectl kustomize deploy/kubernetes > "$out/base.yaml"
kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$out/base.yaml"
echo "deploy/kubernetes: $(grep -c '^kind:' "$out/base.yaml") objects valid for Kubernetes $K8S_VERSION"
kubectl kustomize deploy/kubernetes-ha > "$out/ha.yaml"
kubernetes-validate --strict --quiet -k "$K8S_VERSION" "$out/ha.yaml"
echo "deploy/kubernetes-ha: $(grep -c '^kind:' "$out/ha.yaml") objects valid for Kubernetes $K8S_VERSION"
kubectl kustomize deploy/kubernetes/monitoring > "$out/monitoring.yaml"
# The rule groups of the one PrometheusRule in a rendered file, checked and unit-tested by
# promtool (deploy/kubernetes/monitoring/rules-test.yaml).
check_rules() {
  python3 - "$1" "$out/rules.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rules = [d for d in docs if d["kind"] == "PrometheusRule"]
assert len(rules) == 1, "one PrometheusRule"
yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, open(sys.argv[2], "w"))
PY
  promtool check rules "$out/rules.yaml"
  cp deploy/kubernetes/monitoring/rules-test.yaml "$out/rules-test.yaml"
  promtool test rules "$out/rules-test.yaml"
}
check_rules "$out/monitoring.yaml"

# The Helm chart, with the real helm: lint (strict) and render with its defaults and with each
# values file of its ci/ folder; every object valid for the oldest Kubernetes the chart claims
# (kubeVersion >=1.25) and the newest the validator knows; the archive packages.
bash .ci/install-helm.sh
chart=deploy/helm/eventflow
for values in "$chart"/ci/*.yaml; do
  name=$(basename "$values" .yaml)
  helm lint --strict "$chart" -f "$values" >/dev/null
  helm template eventflow "$chart" --namespace eventflow -f "$values" > "$out/helm-$name.yaml"
  for k in 1.25.0 1.37.0; do
    kubernetes-validate --strict --quiet -k "$k" "$out/helm-$name.yaml" 2>&1 | grep -v "Couldn't find schema for kind \(ServiceMonitor\|PrometheusRule\)" || true
    kubernetes-validate --strict --quiet -k "$k" "$out/helm-$name.yaml" >/dev/null 2>&1 || { echo "$name: not valid for Kubernetes $k"; exit 1; }
  done
  echo "helm chart with $name: $(grep -c '^kind:' "$out/helm-$name.yaml") objects valid for Kubernetes 1.25.0 and 1.37.0"
done
helm package "$chart" --destination "$out" >/dev/null
ls "$out"/eventflow-*.tgz
# The chart's bundled alerts pass the same rule tests as the kustomize ones.
check_rules "$out/helm-monitoring-values.yaml"
