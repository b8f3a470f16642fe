{{/* Names and labels. */}}
{{- define "portcullis.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "portcullis.fullname" -}}
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

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ include "portcullis.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "portcullis.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "portcullis.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: portcullis
{{- end }}

{{- define "portcullis.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "portcullis.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the gateway reads its policy set: the ConfigMap mount, or git-sync's worktree link. */}}
{{- define "portcullis.policyDir" -}}
{{- if .Values.gitSync.enabled }}
{{- $sub := trimAll "/" .Values.gitSync.subPath }}
{{- if $sub }}/policies/current/{{ $sub }}{{ else }}/policies/current{{ end }}
{{- else }}/policies{{ end }}
{{- end }}

{{/* A policy file path under the chart's policies/ folder -> its ConfigMap key ("/" is not allowed in keys). */}}
{{- define "portcullis.policyKey" -}}
{{- trimPrefix "policies/" . | replace "/" "__" }}
{{- end }}

{{/*
The rendered gateway.yaml: values.config with the keys the chart owns set from the
chart's layout (container paths, port, OPA sidecar).
*/}}
{{- define "portcullis.gatewayConfig" -}}
{{- $cfg := deepCopy .Values.config }}
{{- range $section := list "server" "identity" "policy" "audit" "cache" "lifecycle" }}
{{- if not (hasKey $cfg $section) }}{{- $_ := set $cfg $section dict }}{{- end }}
{{- end }}
{{- $_ := set $cfg.server "host" "0.0.0.0" }}
{{- $_ := set $cfg.server "port" 8080 }}
{{- $_ := set $cfg.identity "agents_file" "/etc/portcullis/agents/agents.yaml" }}
{{- $_ := set $cfg.policy "dir" (include "portcullis.policyDir" .) }}
{{- $_ := set $cfg.audit "path" "/var/lib/portcullis/audit.db" }}
{{- $_ := set $cfg.audit "spool_path" "/var/lib/portcullis/audit.spool" }}
{{- $_ := set $cfg.lifecycle "path" "/var/lib/portcullis/lifecycle.db" }}
{{- if .Values.opa.enabled }}
{{- $_ := set $cfg.policy "backend" "opa" }}
{{- $_ := set $cfg.policy "opa" (dict "url" "http://127.0.0.1:8181" "timeout_s" .Values.opa.timeoutSeconds "max_connections" .Values.opa.maxConnections "decision_path" "portcullis/decision") }}
{{- if and .Values.opa.l2Cache (not $cfg.cache.l2) }}
{{- $_ := set $cfg.cache "l2" (dict "redis_url_env" "PORTCULLIS_REDIS_URL" "key_prefix" "portcullis:decisions:" "timeout_s" 0.05) }}
{{- end }}
{{- end }}
{{- toYaml $cfg }}
{{- end }}

{{- define "portcullis.agentsYaml" -}}
{{- toYaml .Values.agents.content }}
{{- end }}

{{/* Restricted container security context, shared by every container of the pod. */}}
{{- define "portcullis.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}
