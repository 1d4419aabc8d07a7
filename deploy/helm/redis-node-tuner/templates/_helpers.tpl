{{/*
Labels. Object names and selectors are fixed (not derived from the release name): the agent's
label, taint and condition are cluster-wide, so one release per cluster, and the selectors stay
those of deploy/base (a DaemonSet selector cannot change, so moving between kustomize and Helm
keeps working). The labels below are what the chart adds to deploy/base's; tests/helm.rs ignores
exactly these when it compares the two.
*/}}
{{- define "rnt.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service | quote }}
app.kubernetes.io/instance: {{ .Release.Name | quote }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/part-of: redis-node-tuner
{{- end }}

{{/* The labels of an object of component "agent" or "monitoring". */}}
{{- define "rnt.labels" -}}
app.kubernetes.io/name: redis-node-tuner
app.kubernetes.io/component: {{ .component }}
{{ include "rnt.helmLabels" .root }}
{{- end }}

{{/* The agent's pods: the selector of the DaemonSet, the Service and the PodMonitor. */}}
{{- define "rnt.selectorLabels" -}}
app.kubernetes.io/name: redis-node-tuner
app.kubernetes.io/component: agent
{{- end }}

{{/* The agent's user name, which the admission policies match. */}}
{{- define "rnt.serviceAccountUser" -}}
{{ printf "system:serviceaccount:%s:redis-node-tuner" .Release.Namespace }}
{{- end }}

{{/* image reference: repository[:tag][@digest] */}}
{{- define "rnt.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else -}}
{{ printf "%s:%s" .Values.image.repository $tag }}
{{- end -}}
{{- end }}

{{/* The profile as the agent reads it. */}}
{{- define "rnt.profile" -}}
{{ toYaml .Values.profile }}
{{- end }}
