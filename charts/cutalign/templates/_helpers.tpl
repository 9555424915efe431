{{/*
Names, labels and images.
*/}}

{{/*
cutalign.names.name: the chart name, or nameOverride.
Usage: {{ include "cutalign.names.name" . }}
*/}}
{{- define "cutalign.names.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
cutalign.names.fullname: prefix of every resource name (`<release>` if it already contains the chart name).
Usage: {{ include "cutalign.names.fullname" . }}
*/}}
{{- define "cutalign.names.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "cutalign.names.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.names.component: `<fullname>-<component>`, for per-component resources.
Usage: {{ include "cutalign.names.component" (dict "ctx" $ "component" "generator") }}
*/}}
{{- define "cutalign.names.component" -}}
{{- printf "%s-%s" (include "cutalign.names.fullname" .ctx) .component | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
cutalign.names.serviceAccount: the service account the services run as.
Usage: {{ include "cutalign.names.serviceAccount" . }}
*/}}
{{- define "cutalign.names.serviceAccount" -}}
{{- default (include "cutalign.names.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{/*
cutalign.names.pipelineServiceAccount: the service account pipeline runs use (may create training jobs).
Usage: {{ include "cutalign.names.pipelineServiceAccount" . }}
*/}}
{{- define "cutalign.names.pipelineServiceAccount" -}}
{{- default (include "cutalign.names.component" (dict "ctx" . "component" "pipeline")) .Values.pipeline.serviceAccount -}}
{{- end -}}

{{/*
cutalign.labels.standard: labels of every resource.
Usage: {{ include "cutalign.labels.standard" (dict "ctx" $ "component" "generator") }}
*/}}
{{- define "cutalign.labels.standard" -}}
{{ include "cutalign.labels.selector" . }}
app.kubernetes.io/part-of: cutalign
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
cutalign.labels.selector: the immutable labels selectors and NetworkPolicies match on.
Usage: {{ include "cutalign.labels.selector" (dict "ctx" $ "component" "generator") }}
*/}}
{{- define "cutalign.labels.selector" -}}
app.kubernetes.io/name: {{ include "cutalign.names.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{/*
cutalign.images.ref: `repository@digest` when a digest is set, else `repository:tag`.
Usage: {{ include "cutalign.images.ref" .Values.images.generator }}
*/}}
{{- define "cutalign.images.ref" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.images.pullSecrets: the pod's imagePullSecrets block, if any.
Usage: {{- include "cutalign.images.pullSecrets" . | nindent 6 }}
*/}}
{{- define "cutalign.images.pullSecrets" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
cutalign.checksum.config: sha256 of the ConfigMap a component reads, as a pod annotation: a settings change
rolls exactly the components that read the changed section (a trainer knob rolls no service, a generator knob
not the GPU policy server).
Usage: {{- include "cutalign.checksum.config" (dict "ctx" $ "component" "generator") | nindent 8 }}
*/}}
{{- define "cutalign.checksum.config" -}}
{{- $c := include "cutalign.component" . | fromJson -}}
checksum/config: {{ include "cutalign.config.data" (dict "ctx" .ctx "component" .component) | sha256sum }}
{{- end -}}
