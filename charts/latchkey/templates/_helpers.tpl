{{- define "latchkey.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "latchkey.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "latchkey.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "latchkey.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "latchkey.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "latchkey.selectorLabels" -}}
app.kubernetes.io/name: {{ include "latchkey.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every object the chart creates. Not `managed-by: latchkey`: that label marks the operator's own
Secrets and Jobs, which it watches by that selector. */}}
{{- define "latchkey.labels" -}}
helm.sh/chart: {{ include "latchkey.chart" . }}
{{ include "latchkey.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: latchkey
{{- end }}

{{- define "latchkey.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "latchkey.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "latchkey.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{- define "latchkey.connectBaseUrl" -}}
{{- if .Values.connect.baseUrl }}
{{- .Values.connect.baseUrl | trimSuffix "/" }}
{{- else if .Values.ingress.enabled }}
{{- printf "%s://%s%s" (ternary "https" "http" (gt (len .Values.ingress.tls) 0)) .Values.ingress.host (trimSuffix "/" (.Values.ingress.path | default "/")) }}
{{- else }}
{{- printf "http://%s-connect.%s.svc" (include "latchkey.fullname" .) .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The rules the operator needs where it watches: in a ClusterRole (whole cluster) or in a Role per watched
namespace. Keep in step with what src/ calls; tests/helm_rbac.rs proves it is enough and no more. */}}
{{- define "latchkey.watchRules" -}}
# Its own kinds: read and watch; status by server-side apply.
- apiGroups: ["latchkey.dev"]
  resources: [connectors, embeddedconnections, useractivations]
  verbs: [get, list, watch]
- apiGroups: ["latchkey.dev"]
  resources: [connectors/status, embeddedconnections/status, useractivations/status]
  verbs: [patch]
# The cleanup finalizer on activations.
- apiGroups: ["latchkey.dev"]
  resources: [useractivations]
  verbs: [patch, update]
# Owner references with blockOwnerDeletion on the Secrets and Jobs it creates.
- apiGroups: ["latchkey.dev"]
  resources: [useractivations/finalizers]
  verbs: [update]
# Secrets: metadata watches by label selector (owned: managed-by=latchkey; sources: latchkey.dev/source=true), reads
# of referenced source Secrets, server-side apply of owned ones (and of the source label), deletion of owned ones.
# RBAC cannot restrict list/watch to a label selector: with the whole cluster watched, list covers every Secret.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, delete]
# The per-tenant Jobs.
- apiGroups: ["batch"]
  resources: [jobs]
  verbs: [get, list, watch, create, delete]
# ConfigMaps that Job templates name must exist.
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get]
# Events on transitions.
- apiGroups: ["events.k8s.io"]
  resources: [events]
  verbs: [create, patch]
{{- end }}
