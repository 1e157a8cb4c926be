{{/* Name of the chart, overridable. */}}
{{- define "chatpipe.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name of the release's objects. */}}
{{- define "chatpipe.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "chatpipe.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "chatpipe.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels the Deployment selects its pods by. */}}
{{- define "chatpipe.selectorLabels" -}}
app.kubernetes.io/name: {{ include "chatpipe.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "chatpipe.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "chatpipe.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference. */}}
{{- define "chatpipe.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
The operator's rules: exactly the API calls the controller makes
(chatpipe_operator::rbac::REQUIRED_PERMISSIONS; operator/tests/chart.rs
fails when they differ). Every resource is namespaced, so the same rules
serve the ClusterRole and each namespace's Role.
*/}}
{{- define "chatpipe.rules" -}}
# The resource: watched; the finalizer added/removed with a patch.
- apiGroups: ["chatpipe.dev"]
  resources: ["chatpipelines"]
  verbs: ["list", "patch", "watch"]
# Status written with server-side apply.
- apiGroups: ["chatpipe.dev"]
  resources: ["chatpipelines/status"]
  verbs: ["patch"]
# Applied; the FAQ rules ConfigMap (<name>-replies) dropped from the spec
# is looked up by name and deleted.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["create", "delete", "get", "patch"]
- apiGroups: [""]
  resources: ["services"]
  verbs: ["create", "patch"]
# Read only, each by name (`get`, never `list`/`watch`), to checksum the
# Secrets a pipeline references into its pod templates. RBAC cannot limit
# `get` to "referenced" names: set watchNamespaces to confine it.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get"]
- apiGroups: ["apps"]
  resources: ["deployments"]
  verbs: ["create", "get", "list", "patch", "watch"]
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["create", "get", "list", "patch", "watch"]
# The migration Job: watched so its completion updates the status, listed
# to run migrations one at a time, finished older ones deleted.
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "delete", "list", "patch", "watch"]
# An Ingress dropped from the spec is looked up and deleted.
- apiGroups: ["networking.k8s.io"]
  resources: ["ingresses"]
  verbs: ["create", "delete", "get", "patch"]
# spec.networkPolicy: applied; the pipeline's own listed by label to delete
# the ones no longer in the spec.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["create", "delete", "list", "patch"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["create", "patch"]
# Kubernetes Events.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
