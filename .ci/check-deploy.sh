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
python3 - "$out/monitoring.yaml" "$out/rules.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rules = [d for d in docs if d["kind"] == "PrometheusRule"]
assert len(rules) == 1, "one PrometheusRule"
yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}, open(sys.argv[2], "w"))
PY
promtool check rules "$out/rules.yaml"
cp deploy/kubernetes/monitoring/rules-test.yaml "$out/rules-test.yaml"
promtool test rules "$out/rules-test.yaml"
