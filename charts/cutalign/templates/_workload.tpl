{{/*
The pod pieces every cutalign service shares: one container listening on 8080 (API, /healthz, /readyz,
/metrics), settings from the config ConfigMap, credentials from Secrets, non-root on a read-only root
filesystem with /tmp as an emptyDir.
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
Usage: {{- include "cutalign.workload.container" (dict "ctx" $ "name" "generator" "image" .Values.images.generator
         "module" "cutalign.generator.service" "values" .Values.generator "gpus" 0 "policyClient" true
         "extraEnv" "" "live" "/healthz" "ready" "/readyz") | nindent 8 }}
*/}}
{{- define "cutalign.workload.container" -}}
{{- $ctx := .ctx -}}
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
        name: {{ include "cutalign.names.component" (dict "ctx" $ctx "component" "config") }}
  env:
    {{- include "cutalign.env.secrets" (dict "ctx" $ctx "policyClient" .policyClient "policyServer" .policyServer) | nindent 4 }}
    {{- with .extraEnv }}
    {{- . | nindent 4 }}
    {{- end }}
    - name: HOME
      value: /tmp
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
    metadata:
      labels: {{- include "cutalign.labels.standard" (dict "ctx" $ctx "component" .component) | nindent 8 }}
      annotations: {{- include "cutalign.checksum.config" $ctx | nindent 8 }}
    spec:
      serviceAccountName: {{ include "cutalign.names.serviceAccount" $ctx }}
      automountServiceAccountToken: false
      {{- include "cutalign.images.pullSecrets" $ctx | nindent 6 }}
      securityContext: {{- toYaml $ctx.Values.podSecurityContext | nindent 8 }}
      {{- include "cutalign.workload.scheduling" .values | nindent 6 }}
      terminationGracePeriodSeconds: 30
      containers:
        {{- include "cutalign.workload.container" (merge (dict "name" .component) .) | nindent 8 }}
      volumes:
        - name: tmp
          emptyDir: {}
{{- end -}}

{{/*
cutalign.workload.inferenceService: a KServe InferenceService whose predictor runs a cutalign KServe model
server (`kserve-container`, port 8080, /v2/health probes).
Usage: {{ include "cutalign.workload.inferenceService" (dict "ctx" $ "component" "policy" "image" ... "module" ...
         "values" .Values.policy "kserve" .Values.policy.kserve "gpus" .Values.policy.gpus "policyClient" false) }}
*/}}
{{- define "cutalign.workload.inferenceService" -}}
{{- $ctx := .ctx -}}
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
    labels: {{- include "cutalign.labels.selector" (dict "ctx" $ctx "component" .component) | nindent 6 }}
    annotations: {{- include "cutalign.checksum.config" $ctx | nindent 6 }}
    {{- include "cutalign.images.pullSecrets" $ctx | nindent 4 }}
    securityContext: {{- toYaml $ctx.Values.podSecurityContext | nindent 6 }}
    {{- include "cutalign.workload.scheduling" .values | nindent 4 }}
    containers:
      {{- include "cutalign.workload.container" (merge (dict "name" "kserve-container" "live" "/v2/health/live" "ready" "/v2/health/ready") .) | nindent 6 }}
    volumes:
      - name: tmp
        emptyDir: {}
{{- end -}}
