{{/* The ChatCluster's name. */}}
{{- define "chatcluster.name" -}}
{{- default .Release.Name .Values.clusterName | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/* Keys of the values that are not ChatCluster spec fields. */}}
{{- define "chatcluster.spec" -}}
{{- toYaml (omit .Values "clusterName" "monitoring" "global") }}
{{- end }}

{{- define "chatcluster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/name: chatcluster
app.kubernetes.io/instance: {{ include "chatcluster.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: chatcluster
{{- end }}
