{{/*
The pod pieces every cutalign service shares: one container listening on 8080 (API, /healthz, /readyz,
/metrics), settings from its component's ConfigMap, credentials from Secrets, CA bundles mounted, non-root on a
read-only root filesystem with /tmp as an emptyDir, and the operator's per-component additions (`extraEnv`,
`extraEnvFrom`, `extraVolumes`, `extraVolumeMounts`, `podAnnotations`, `podLabels` of the component's values;
any that a values section lacks count as empty, so a template calling these helpers gets them as soon as its
values section has the keys).
*/}}

{{/*
cutalign.resources.withGpus: a resources block with `nvidia.com/gpu` added to requests and limits when gpus > 0.
Usage: {{- include "cutalign.resources.withGpus" (dict "resources" .Values.policy.resources "gpus" .Values.policy.gpus) | nindent 12 }}
*/}}
{{- define "cutalign.resources.withGpus" -}}
{{- $res := deepCopy (default dict .resources) -}}
{{- if gt (int .gpus) 0 -}}
{{- $limits := default dict $res.limits -}}
{{- $requests := default dict $res.requests -}}
{{- $_ := set $limits "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $requests "nvidia.com/gpu" (int .gpus) -}}
{{- $_ := set $res "limits" $limits -}}
{{- $_ := set $res "requests" $requests -}}
{{- end -}}
{{- toYaml $res -}}
{{- end -}}

{{/*
cutalign.workload.scheduling: nodeSelector, tolerations and affinity of a pod, from a component's values.
Usage: {{- include "cutalign.workload.scheduling" .Values.generator | nindent 6 }}
*/}}
{{- define "cutalign.workload.scheduling" -}}
{{- with .nodeSelector }}
nodeSelector: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations: {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity: {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
cutalign.workload.container: the service container (name, image, `python -m <module>`, env, probes, resources).
`component` picks the ConfigMap, Secrets and CA bundles (cutalign.components); `renderedEnv` is extra rendered
env (e.g. the feedback token).
Usage: {{- include "cutalign.workload.container" (dict "ctx" $ "name" "generator" "component" "generator"
         "image" .Values.images.generator "module" "cutalign.generator.service" "values" .Values.generator
         "gpus" 0 "live" "/healthz" "ready" "/readyz") | nindent 8 }}
*/}}
{{- define "cutalign.workload.container" -}}
{{- $ctx := .ctx -}}
{{- $c := include "cutalign.component" . | fromJson -}}
- name: {{ .name }}
  image: {{ include "cutalign.images.ref" .image }}
  imagePullPolicy: {{ $ctx.Values.images.pullPolicy }}
  command: ["python", "-m", {{ .module | quote }}]
  ports:
    - name: http
      containerPort: 8080
      protocol: TCP
  envFrom:
    - configMapRef:
        name: {{ include "cutalign.names.component" (dict "ctx" $ctx "component" (printf "%s-config" $c.config)) }}
    {{- with (dig "extraEnvFrom" list .values) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  env:
    {{- include "cutalign.env.secrets" (dict "ctx" $ctx "component" .component) | nindent 4 }}
    {{- with .renderedEnv }}
    {{- . | nindent 4 }}
    {{- end }}
    - name: HOME
      value: /tmp
    {{- with (dig "extraEnv" list .values) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  startupProbe:
    httpGet:
      path: {{ .live }}
      port: http
    periodSeconds: 5
    failureThreshold: 60
  livenessProbe:
    httpGet:
      path: {{ .live }}
      port: http
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: {{ .ready }}
      port: http
    periodSeconds: 5
    timeoutSeconds: 5
    failureThreshold: 3
  resources: {{- include "cutalign.resources.withGpus" (dict "resources" .values.resources "gpus" (default 0 .gpus)) | nindent 4 }}
  securityContext: {{- toYaml $ctx.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: tmp
      mountPath: /tmp
    {{- include "cutalign.tls.volumeMounts" (dict "ctx" $ctx "component" .component) | nindent 4 }}
    {{- with (dig "extraVolumeMounts" list .values) }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
cutalign.workload.volumes: the pod volumes of a service (/tmp, CA bundles, extraVolumes).
Usage: {{- include "cutalign.workload.volumes" . | nindent 6 }} with the container's arguments
*/}}
{{- define "cutalign.workload.volumes" -}}
- name: tmp
  emptyDir: {}
{{- include "cutalign.tls.volumes" (dict "ctx" .ctx "component" .component) }}
{{- with (dig "extraVolumes" list .values) }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
cutalign.workload.podMetadata: labels and annotations of a service's pods: the standard labels, podLabels, the
component's config checksum (a settings change rolls only the components that read it) and podAnnotations.
Usage: {{- include "cutalign.workload.podMetadata" . | nindent 6 }} with the container's arguments
*/}}
{{- define "cutalign.workload.podMetadata" -}}
labels: {{- include "cutalign.labels.standard" (dict "ctx" .ctx "component" .component) | nindent 2 }}
  {{- with (dig "podLabels" dict .values) }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations: {{- include "cutalign.checksum.config" . | nindent 2 }}
  {{- with (dig "podAnnotations" dict .values) }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/*
cutalign.workload.deployment: a Deployment of one cutalign service (see cutalign.workload.container for the
arguments, plus `component` and `replicas`).
Usage: {{ include "cutalign.workload.deployment" (dict "ctx" $ "component" "generator" "replicas" 1 ...) }}
*/}}
{{- define "cutalign.workload.deployment" -}}
{{- $ctx := .ctx -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "cutalign.names.component" (dict "ctx" $ctx "component" .component) }}
  namespace: {{ $ctx.Release.Namespace }}
  labels: {{- include "cutalign.labels.standard" (dict "ctx" $ctx "component" .component) | nindent 4 }}
spec:
  replicas: {{ .replicas }}
  revisionHistoryLimit: 5
  selector:
    matchLabels: {{- include "cutalign.labels.selector" (dict "ctx" $ctx "component" .component) | nindent 6 }}
  template:
    metadata: {{- include "cutalign.workload.podMetadata" . | nindent 6 }}
    spec:
      serviceAccountName: {{ include "cutalign.names.serviceAccount" $ctx }}
      automountServiceAccountToken: false
      {{- include "cutalign.images.pullSecrets" $ctx | nindent 6 }}
      securityContext: {{- toYaml $ctx.Values.podSecurityContext | nindent 8 }}
      {{- include "cutalign.workload.scheduling" .values | nindent 6 }}
      terminationGracePeriodSeconds: 30
      containers:
        {{- include "cutalign.workload.container" (merge (dict "name" .component) .) | nindent 8 }}
      volumes: {{- include "cutalign.workload.volumes" . | nindent 8 }}
{{- end -}}

{{/*
cutalign.workload.inferenceService: a KServe InferenceService whose predictor runs a cutalign KServe model
server (`kserve-container`, port 8080, /v2/health probes).
Usage: {{ include "cutalign.workload.inferenceService" (dict "ctx" $ "component" "policy" "image" ... "module" ...
         "values" .Values.policy "kserve" .Values.policy.kserve "gpus" .Values.policy.gpus) }}
*/}}
{{- define "cutalign.workload.inferenceService" -}}
{{- $ctx := .ctx -}}
{{- $meta := include "cutalign.workload.podMetadata" . | fromYaml -}}
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {{ include "cutalign.names.component" (dict "ctx" $ctx "component" .component) }}
  namespace: {{ $ctx.Release.Namespace }}
  labels: {{- include "cutalign.labels.standard" (dict "ctx" $ctx "component" .component) | nindent 4 }}
  annotations:
    serving.kserve.io/deploymentMode: {{ .kserve.deploymentMode }}
spec:
  predictor:
    minReplicas: {{ .kserve.minReplicas }}
    maxReplicas: {{ .kserve.maxReplicas }}
    serviceAccountName: {{ include "cutalign.names.serviceAccount" $ctx }}
    automountServiceAccountToken: false
    labels: {{- toYaml $meta.labels | nindent 6 }}
    annotations: {{- toYaml $meta.annotations | nindent 6 }}
    {{- include "cutalign.images.pullSecrets" $ctx | nindent 4 }}
    securityContext: {{- toYaml $ctx.Values.podSecurityContext | nindent 6 }}
    {{- include "cutalign.workload.scheduling" .values | nindent 4 }}
    containers:
      {{- include "cutalign.workload.container" (merge (dict "name" "kserve-container" "live" "/v2/health/live" "ready" "/v2/health/ready") .) | nindent 6 }}
    volumes: {{- include "cutalign.workload.volumes" . | nindent 6 }}
{{- end -}}
