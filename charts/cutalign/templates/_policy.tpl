{{/*
cutalign.policy.url: the URL the generator calls: policy.url, else the in-chart policy server.
Usage: {{ include "cutalign.policy.url" . }}
*/}}
{{- define "cutalign.policy.url" -}}
{{- $name := include "cutalign.names.component" (dict "ctx" . "component" "policy") -}}
{{- if .Values.policy.url -}}
{{- .Values.policy.url -}}
{{- else if eq .Values.policy.mode "kserve" -}}
{{- printf "http://%s-predictor.%s.svc.cluster.local" $name .Release.Namespace -}}
{{- else -}}
{{- printf "http://%s.%s.svc.cluster.local:8080" $name .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.policy.backend: policy.backend, else `tgi` for TGI and `openai` for cutalign's policy server.
Usage: {{ include "cutalign.policy.backend" . }}
*/}}
{{- define "cutalign.policy.backend" -}}
{{- default (ternary "tgi" "openai" (eq .Values.policy.mode "tgi")) .Values.policy.backend -}}
{{- end -}}

{{/*
cutalign.s3.endpoint: s3.endpoint, else the `minio` Service a MinIO Tenant creates in the release namespace.
Usage: {{ include "cutalign.s3.endpoint" . }}
*/}}
{{- define "cutalign.s3.endpoint" -}}
{{- if .Values.s3.endpoint -}}
{{- .Values.s3.endpoint -}}
{{- else -}}
{{- printf "minio.%s.svc.cluster.local:%d" .Release.Namespace (ternary 443 80 .Values.minio.tenant.requestAutoCert) -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.iteration.builderUrl: iteration.builderUrl, else the in-chart target builder (empty without one).
Usage: {{ include "cutalign.iteration.builderUrl" . }}
*/}}
{{- define "cutalign.iteration.builderUrl" -}}
{{- if .Values.iteration.builderUrl -}}
{{- .Values.iteration.builderUrl -}}
{{- else if .Values.builder.enabled -}}
{{- printf "http://%s.%s.svc.cluster.local:8080" (include "cutalign.names.component" (dict "ctx" . "component" "target-builder")) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.iteration.policyAdminUrl: iteration.policyAdminUrl only. The chart's embedded server follows
policy/current.json (policyServer.watchCurrent), and its admin token never reaches the pipeline's steps.
Usage: {{ include "cutalign.iteration.policyAdminUrl" . }}
*/}}
{{- define "cutalign.iteration.policyAdminUrl" -}}
{{- default "" .Values.iteration.policyAdminUrl -}}
{{- end -}}

{{/*
cutalign.iteration.policyResource: the Deployment/InferenceService a promotion rolls out (modes kserve, vllm,
tgi): iteration.policyResource, else the chart's; empty in mode embedded.
Usage: {{ include "cutalign.iteration.policyResource" . }}
*/}}
{{- define "cutalign.iteration.policyResource" -}}
{{- if .Values.iteration.policyResource -}}
{{- .Values.iteration.policyResource -}}
{{- else if has .Values.policy.mode (list "kserve" "vllm" "tgi") -}}
{{- include "cutalign.policy.resource" . -}}
{{- end -}}
{{- end -}}
