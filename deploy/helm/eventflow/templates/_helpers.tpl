{{/* The chart's name. */}}
{{- define "eventflow.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The objects' name: the release's, with the chart's unless the release name has it. */}}
{{- define "eventflow.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "eventflow.selectorLabels" -}}
app.kubernetes.io/name: {{ include "eventflow.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "eventflow.labels" -}}
{{ include "eventflow.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eventflow
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "eventflow.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "eventflow.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* registry/repository:tag or @digest; global.imageRegistry wins over image.registry. */}}
{{- define "eventflow.image" -}}
{{- $registry := default .Values.image.registry .Values.global.imageRegistry -}}
{{- $repo := ternary (printf "%s/%s" $registry .Values.image.repository) .Values.image.repository (ne $registry "") -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" $repo .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repo (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Whether several replicas share the work by leader election. */}}
{{- define "eventflow.ha" -}}
{{- if gt (int .Values.replicaCount) 1 -}}true{{- end -}}
{{- end -}}

{{/* Whether the state is in an external database (PostgreSQL, MySQL/MariaDB). */}}
{{- define "eventflow.externalState" -}}
{{- if or .Values.externalDatabase.url .Values.externalDatabase.existingSecret -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the state database's URL. */}}
{{- define "eventflow.stateSecret" -}}
{{- default (printf "%s-state" (include "eventflow.fullname" .)) .Values.externalDatabase.existingSecret -}}
{{- end -}}

{{/* The Secret of the pipeline's ${NAME} references. */}}
{{- define "eventflow.envSecret" -}}
{{- default (printf "%s-env" (include "eventflow.fullname" .)) .Values.existingSecret -}}
{{- end -}}

{{/* Refuses values that cannot work, with what to do. */}}
{{- define "eventflow.check" -}}
{{- if and (include "eventflow.ha" .) (not (include "eventflow.externalState" .)) -}}
{{- fail (printf "replicaCount: %v replicas need shared state: set externalDatabase.url (or externalDatabase.existingSecret) to a PostgreSQL or MySQL database; a local SQLite state would give each replica its own checkpoint" .Values.replicaCount) -}}
{{- end -}}
{{- if and .Values.persistence.enabled (include "eventflow.externalState" .) -}}
{{- fail "persistence.enabled and externalDatabase are both set: the state is in one place, choose one" -}}
{{- end -}}
{{- end -}}

{{/*
The pipeline file: the `pipeline` value's stages (and tests), with `api`, `state` and
`leader_election` from the chart's values, and `clusterName` as the `cluster` of every
kube_events source that does not name its own.
*/}}
{{- define "eventflow.pipeline" -}}
{{- $p := .Values.pipeline -}}
{{- if kindIs "string" $p -}}
{{- $p = fromYaml $p -}}
{{- if hasKey $p "Error" -}}
{{- fail (printf "pipeline: not a YAML map: %s" (get $p "Error")) -}}
{{- end -}}
{{- end -}}
{{- if empty $p -}}
{{- $p = .Files.Get "files/default-pipeline.yaml" | fromYaml -}}
{{- end -}}
{{- $p = deepCopy $p -}}
{{- if not (kindIs "map" (get $p "stages")) -}}
{{- fail "pipeline: it has no `stages:` map (a pipeline file's stages, keyed by id)" -}}
{{- end -}}
{{- $_ := set $p "version" 1 -}}
{{- $_ := set $p "api" (dict "listen" (printf "0.0.0.0:%v" .Values.containerPorts.metrics)) -}}
{{- if include "eventflow.externalState" . -}}
{{- $_ := set $p "state" (dict "url" "${EVENTFLOW_STATE_URL}") -}}
{{- else -}}
{{- $_ := set $p "state" (dict "url" "sqlite:///var/lib/eventflow/state.db") -}}
{{- end -}}
{{- if include "eventflow.ha" . -}}
{{- $_ := set $p "leader_election" (dict "lease" (include "eventflow.fullname" .) "mode" (.Values.leaderElection.mode | default "pipeline") "lease_duration" .Values.leaderElection.leaseDuration "renew_deadline" .Values.leaderElection.renewDeadline "retry_period" .Values.leaderElection.retryPeriod) -}}
{{- end -}}
{{- if .Values.clusterName -}}
{{- range $id, $s := $p.stages -}}
{{- if and (kindIs "map" $s) (eq (toString $s.type) "kube_events") (not (hasKey $s "cluster")) -}}
{{- $_ := set $s "cluster" $.Values.clusterName -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- toYaml $p -}}
{{- end -}}

{{/* kind -> API group and resource, for the kinds `enrich` can watch. */}}
{{- define "eventflow.enrichRules" -}}
{{- $known := dict "Pod" (list "" "pods") "Node" (list "" "nodes") "Service" (list "" "services") "PersistentVolumeClaim" (list "" "persistentvolumeclaims") "ReplicaSet" (list "apps" "replicasets") "Deployment" (list "apps" "deployments") "StatefulSet" (list "apps" "statefulsets") "DaemonSet" (list "apps" "daemonsets") "Job" (list "batch" "jobs") "CronJob" (list "batch" "cronjobs") -}}
{{- $groups := dict "" (list "namespaces") -}}
{{- range .Values.enrich.kinds -}}
{{- $gr := get $known . -}}
{{- if not $gr -}}
{{- fail (printf "enrich.kinds: `%s` is not a kind enrich watches (%s)" . (keys $known | sortAlpha | join ", ")) -}}
{{- end -}}
{{- $g := index $gr 0 -}}
{{- $cur := get $groups $g | default list -}}
{{- $_ := set $groups $g (append $cur (index $gr 1)) -}}
{{- end -}}
{{- range $g := keys $groups | sortAlpha }}
- apiGroups: [{{ $g | quote }}]
  resources: {{ index $groups $g | uniq | toJson }}
  verbs: ["list", "watch"]
{{- end -}}
{{- end -}}
