{{/*
The vLLM and TGI pods: a model-sync init container (`python -m cutalign.policy.sync`, in the policy-server
image) downloads the promoted release from S3 into the `models` volume, verifies its sha256 and writes its
release id to /models/SERVED; the server starts on /models/<release id> (so vLLM's /v1/models and TGI's
/info name the release); promotion rolls the Deployment (RollingUpdate: maxSurge/maxUnavailable), and a vLLM
pod that loads LoRA releases runs the sync again as a sidecar (`--follow`) that loads each one in place.
*/}}

{{/*
cutalign.policy.resource: the name of the policy's Deployment or InferenceService (what promotion patches).
Usage: {{ include "cutalign.policy.resource" . }}
*/}}
{{- define "cutalign.policy.resource" -}}
{{- include "cutalign.names.component" (dict "ctx" . "component" "policy") -}}
{{- end -}}

{{/*
cutalign.policy.modelSync: the model-sync container (init container, or with "follow" the vLLM sidecar).
Usage: {{- include "cutalign.policy.modelSync" (dict "ctx" $ "follow" false) | nindent 8 }}
*/}}
{{- define "cutalign.policy.modelSync" -}}
{{- $ctx := .ctx -}}
{{- $p := $ctx.Values.policy -}}
- name: {{ ternary "model-sync" "model-sync-init" .follow }}
  image: {{ include "cutalign.images.ref" $ctx.Values.images.policyServer }}
  imagePullPolicy: {{ $ctx.Values.images.pullPolicy }}
  command: ["python", "-m", "cutalign.policy.sync"{{ if .follow }}, "--follow"{{ end }}]
  envFrom:
    - configMapRef:
        name: {{ include "cutalign.names.component" (dict "ctx" $ctx "component" "policy-config") }}
  env:
    {{- include "cutalign.env.secrets" (dict "ctx" $ctx "component" "model-sync") | nindent 4 }}
    {{- if $p.existingSecret }}
    {{- include "cutalign.env.secretRef" (dict "name" "CUTALIGN_MODEL_SYNC_API_KEY" "secret" $p.existingSecret "key" $p.apiTokenKey) | nindent 4 }}
    {{- end }}
    - name: HOME
      value: /tmp
  {{- if .follow }}
  ports:
    - name: sync
      containerPort: {{ $ctx.Values.modelSync.httpPort }}
      protocol: TCP
  livenessProbe:
    httpGet:
      path: /healthz
      port: sync
    periodSeconds: 10
    timeoutSeconds: 5
    failureThreshold: 3
  readinessProbe:
    httpGet:
      path: /readyz
      port: sync
    periodSeconds: 10
    timeoutSeconds: 5
  {{- end }}
  resources: {{- toYaml $p.modelSyncResources | nindent 4 }}
  securityContext: {{- toYaml $ctx.Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: {{ $ctx.Values.modelSync.modelsDir }}
    - name: tmp
      mountPath: /tmp
    {{- include "cutalign.tls.volumeMounts" (dict "ctx" $ctx "component" "model-sync") | nindent 4 }}
{{- end -}}

{{/*
cutalign.policy.serverProbes: startup, liveness and readiness of a vLLM/TGI server on its `http` port.
Usage: {{- include "cutalign.policy.serverProbes" . | nindent 10 }}
*/}}
{{- define "cutalign.policy.serverProbes" -}}
startupProbe:
  httpGet:
    path: /health
    port: http
  periodSeconds: 10
  failureThreshold: 180  # loading weights onto the GPUs takes minutes
livenessProbe:
  httpGet:
    path: /health
    port: http
  periodSeconds: 10
  timeoutSeconds: 5
  failureThreshold: 3
readinessProbe:
  httpGet:
    path: /health
    port: http
  periodSeconds: 5
  timeoutSeconds: 5
  failureThreshold: 3
{{- end -}}

{{/*
cutalign.policy.gpuDeployment: the Deployment of a vLLM/TGI policy server; `server` is its container (YAML).
Usage: {{ include "cutalign.policy.gpuDeployment" (dict "ctx" $ "server" $container "sidecar" true) }}
*/}}
{{- define "cutalign.policy.gpuDeployment" -}}
{{- $ctx := .ctx -}}
{{- $p := $ctx.Values.policy -}}
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include "cutalign.policy.resource" $ctx }}
  namespace: {{ $ctx.Release.Namespace }}
  labels: {{- include "cutalign.labels.standard" (dict "ctx" $ctx "component" "policy") | nindent 4 }}
spec:
  replicas: {{ $p.replicas }}
  revisionHistoryLimit: 5
  strategy:
    type: RollingUpdate  # a promotion (or a settings change) replaces pods while the others serve
    rollingUpdate:
      maxSurge: {{ $p.rollout.maxSurge }}
      maxUnavailable: {{ $p.rollout.maxUnavailable }}
  selector:
    matchLabels: {{- include "cutalign.labels.selector" (dict "ctx" $ctx "component" "policy") | nindent 6 }}
  template:
    metadata: {{- include "cutalign.workload.podMetadata" (dict "ctx" $ctx "component" "policy" "values" $p) | nindent 6 }}
    spec:
      serviceAccountName: {{ include "cutalign.names.serviceAccount" $ctx }}
      automountServiceAccountToken: false
      {{- include "cutalign.images.pullSecrets" $ctx | nindent 6 }}
      securityContext: {{- toYaml $ctx.Values.podSecurityContext | nindent 8 }}
      {{- include "cutalign.workload.scheduling" $p | nindent 6 }}
      terminationGracePeriodSeconds: 60
      initContainers:
        {{- include "cutalign.policy.modelSync" (dict "ctx" $ctx "follow" false) | nindent 8 }}
      containers:
        {{- .server | nindent 8 }}
        {{- if .sidecar }}
        {{- include "cutalign.policy.modelSync" (dict "ctx" $ctx "follow" true) | nindent 8 }}
        {{- end }}
      volumes:
        - name: models
          emptyDir:
            sizeLimit: {{ $p.modelVolumeSize }}
        - name: tmp
          emptyDir: {}
        - name: dshm
          emptyDir:
            medium: Memory
            sizeLimit: {{ $p.shmSize }}
        {{- include "cutalign.tls.volumes" (dict "ctx" $ctx "component" "model-sync") | nindent 8 }}
        {{- with $p.extraVolumes }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
{{- end -}}

{{/*
cutalign.policy.vllmContainer: `vllm serve` on the synced release ($$ keeps the shell's $( ) from Kubernetes).
Usage: {{ include "cutalign.policy.vllmContainer" . }}
*/}}
{{- define "cutalign.policy.vllmContainer" -}}
{{- $p := .Values.policy -}}
{{- $dir := .Values.modelSync.modelsDir -}}
- name: vllm
  image: {{ include "cutalign.images.ref" $p.vllm.image }}
  imagePullPolicy: {{ .Values.images.pullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - exec vllm serve "{{ $dir }}/$$(cat {{ $dir }}/SERVED)" --served-model-name "$$(cat {{ $dir }}/SERVED)" --host 0.0.0.0 --port 8080 "$@"
    - vllm
    - --gpu-memory-utilization={{ $p.vllm.gpuMemoryUtilization }}
    {{- if gt (int $p.gpus) 1 }}
    - --tensor-parallel-size={{ $p.gpus }}
    {{- end }}
    {{- if $p.loraAdapters }}
    - --enable-lora
    - --max-lora-rank={{ $p.vllm.maxLoraRank }}
    - --max-loras={{ .Values.modelSync.keepAdapters }}
    {{- end }}
    {{- range $p.vllm.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  ports:
    - name: http
      containerPort: 8080
      protocol: TCP
  env:
    - name: HOME
      value: /tmp
    - name: HF_HUB_OFFLINE  # weights come from the models volume only
      value: "1"
    - name: VLLM_NO_USAGE_STATS
      value: "1"
    - name: DO_NOT_TRACK
      value: "1"
    {{- if $p.loraAdapters }}
    - name: VLLM_ALLOW_RUNTIME_LORA_UPDATING  # enables /v1/load_lora_adapter and /v1/unload_lora_adapter
      value: "True"
    {{- end }}
    {{- if $p.existingSecret }}
    {{- include "cutalign.env.secretRef" (dict "name" "VLLM_API_KEY" "secret" $p.existingSecret "key" $p.apiTokenKey) | nindent 4 }}
    {{- end }}
    {{- with $p.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $p.extraEnvFrom }}
  envFrom: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- include "cutalign.policy.serverProbes" . | nindent 2 }}
  resources: {{- include "cutalign.resources.withGpus" (dict "resources" $p.resources "gpus" $p.gpus) | nindent 4 }}
  securityContext: {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: {{ $dir }}
      readOnly: true
    - name: tmp
      mountPath: /tmp
    - name: dshm
      mountPath: /dev/shm
    {{- with $p.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}

{{/*
cutalign.policy.tgiContainer: `text-generation-launcher` on the synced release.
Usage: {{ include "cutalign.policy.tgiContainer" . }}
*/}}
{{- define "cutalign.policy.tgiContainer" -}}
{{- $p := .Values.policy -}}
{{- $dir := .Values.modelSync.modelsDir -}}
- name: tgi
  image: {{ include "cutalign.images.ref" $p.tgi.image }}
  imagePullPolicy: {{ .Values.images.pullPolicy }}
  command: ["/bin/sh", "-c"]
  args:
    - exec text-generation-launcher --model-id "{{ $dir }}/$$(cat {{ $dir }}/SERVED)" --hostname 0.0.0.0 --port 8080 "$@"
    - text-generation-launcher
    {{- if gt (int $p.gpus) 1 }}
    - --num-shard={{ $p.gpus }}
    {{- end }}
    {{- range $p.tgi.extraArgs }}
    - {{ . | quote }}
    {{- end }}
  ports:
    - name: http
      containerPort: 8080
      protocol: TCP
  env:
    - name: HOME
      value: /tmp
    - name: HF_HOME
      value: /tmp/hf
    - name: HF_HUB_OFFLINE  # weights come from the models volume only
      value: "1"
    {{- with $p.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with $p.extraEnvFrom }}
  envFrom: {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- include "cutalign.policy.serverProbes" . | nindent 2 }}
  resources: {{- include "cutalign.resources.withGpus" (dict "resources" $p.resources "gpus" $p.gpus) | nindent 4 }}
  securityContext: {{- toYaml .Values.containerSecurityContext | nindent 4 }}
  volumeMounts:
    - name: models
      mountPath: {{ $dir }}
    - name: tmp
      mountPath: /tmp
    - name: dshm
      mountPath: /dev/shm
    {{- with $p.extraVolumeMounts }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
{{- end -}}
