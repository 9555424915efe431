{{/*
The training job the pipeline submits, rendered exactly as cutalign.k8s.pytorchjob / cutalign.k8s.trainjob
build it from the config ConfigMap (tests/test_helm.py keeps the two equal). The pod security settings are
fixed there (non-root 10001, read-only root fs, no capabilities), so they are fixed here too.
*/}}

{{/*
cutalign.trainer.procsPerNode: launcher.nprocPerNode, else gpusPerNode, else 1.
Usage: {{ include "cutalign.trainer.procsPerNode" . }}
*/}}
{{- define "cutalign.trainer.procsPerNode" -}}
{{- $l := .Values.launcher -}}
{{- if not (kindIs "invalid" $l.nprocPerNode) -}}{{ int $l.nprocPerNode }}{{- else -}}{{ max (int $l.gpusPerNode) 1 }}{{- end -}}
{{- end -}}

{{/*
cutalign.trainer.podLabels: labels of the training pods (NetworkPolicies select them).
Usage: {{- include "cutalign.trainer.podLabels" . | nindent 4 }}
*/}}
{{- define "cutalign.trainer.podLabels" -}}
{{- include "cutalign.labels.selector" (dict "ctx" . "component" "trainer") }}
app.kubernetes.io/part-of: cutalign
{{- end -}}

{{/*
cutalign.trainer.command: torchrun over the trainer script of the trainer image.
Usage: {{- include "cutalign.trainer.command" . | nindent 8 }}
*/}}
{{- define "cutalign.trainer.command" -}}
- torchrun
- --nproc-per-node={{ include "cutalign.trainer.procsPerNode" . }}
- --max-restarts={{ .Values.launcher.maxRestarts }}
- /app/services/trainer/main.py
{{- end -}}

{{/*
cutalign.trainer.env: trainer settings (always resuming: a restarted pod continues from its last checkpoint),
store settings, store keys from the S3 Secret.
Usage: {{- include "cutalign.trainer.env" . | nindent 8 }}
*/}}
{{- define "cutalign.trainer.env" -}}
{{- include "cutalign.env.sectionList" (dict "section" "trainer" "values" .Values.trainer "skip" (list "resume")) }}
- name: CUTALIGN_TRAINER_RESUME
  value: "true"
{{- include "cutalign.env.sectionList" (dict "section" "s3" "values" .Values.s3 "skip" (list "existingSecret" "accessKeyKey" "secretKeyKey" "endpoint" "tls")) }}
- name: CUTALIGN_S3_ENDPOINT
  value: {{ include "cutalign.s3.endpoint" . | quote }}
{{- with (include "cutalign.tls.caFile" (dict "ctx" . "store" "s3")) }}
- name: CUTALIGN_S3_CA_BUNDLE
  value: {{ . | quote }}
{{- end }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_S3_ACCESS_KEY" "secret" .Values.s3.existingSecret "key" .Values.s3.accessKeyKey) }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_S3_SECRET_KEY" "secret" .Values.s3.existingSecret "key" .Values.s3.secretKeyKey) }}
- name: HF_HOME
  value: /tmp/hf
{{- end -}}

{{/*
cutalign.trainer.resources: CPU/memory requests, memory limit, whole GPUs.
Usage: {{- include "cutalign.trainer.resources" . | nindent 8 }}
*/}}
{{- define "cutalign.trainer.resources" -}}
{{- $l := .Values.launcher -}}
requests:
  cpu: {{ $l.cpu | quote }}
  memory: {{ $l.memory | quote }}
  {{- if gt (int $l.gpusPerNode) 0 }}
  nvidia.com/gpu: {{ $l.gpusPerNode | toString | quote }}
  {{- end }}
limits:
  memory: {{ $l.memory | quote }}
  {{- if gt (int $l.gpusPerNode) 0 }}
  nvidia.com/gpu: {{ $l.gpusPerNode | toString | quote }}
  {{- end }}
{{- end -}}

{{- define "cutalign.trainer.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{- define "cutalign.trainer.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end -}}

{{- define "cutalign.trainer.volumes" -}}
- name: tmp
  emptyDir: {}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .Values.launcher.shmSize | quote }}
{{- include "cutalign.tls.volumes" (dict "ctx" . "component" "trainer") }}
{{- end -}}

{{- define "cutalign.trainer.volumeMounts" -}}
- name: tmp
  mountPath: /tmp
- name: dshm
  mountPath: /dev/shm
{{- include "cutalign.tls.volumeMounts" (dict "ctx" . "component" "trainer") }}
{{- end -}}

{{/*
cutalign.trainer.replicaSpec: one PyTorchJob replica (Master or Worker).
Usage: {{- include "cutalign.trainer.replicaSpec" (dict "ctx" $ "replicas" 1) | nindent 6 }}
*/}}
{{- define "cutalign.trainer.replicaSpec" -}}
{{- $ctx := .ctx -}}
{{- $l := $ctx.Values.launcher -}}
replicas: {{ .replicas }}
restartPolicy: OnFailure
template:
  metadata:
    labels: {{- include "cutalign.trainer.podLabels" $ctx | nindent 6 }}
  spec:
    serviceAccountName: {{ include "cutalign.names.component" (dict "ctx" $ctx "component" "trainer") }}
    automountServiceAccountToken: false
    securityContext: {{- include "cutalign.trainer.podSecurityContext" $ctx | nindent 6 }}
    {{- with $l.nodeSelector }}
    nodeSelector: {{- toYaml . | nindent 6 }}
    {{- end }}
    {{- with $l.tolerations }}
    tolerations: {{- toYaml . | nindent 6 }}
    {{- end }}
    volumes: {{- include "cutalign.trainer.volumes" $ctx | nindent 6 }}
    containers:
      - name: pytorch
        image: {{ include "cutalign.images.ref" $ctx.Values.images.trainer }}
        imagePullPolicy: {{ $ctx.Values.images.pullPolicy }}
        command: {{- include "cutalign.trainer.command" $ctx | nindent 10 }}
        args: []
        env: {{- include "cutalign.trainer.env" $ctx | nindent 10 }}
        ports:
          - name: pytorchjob-port
            containerPort: 23456
            protocol: TCP
        resources: {{- include "cutalign.trainer.resources" $ctx | nindent 10 }}
        volumeMounts: {{- include "cutalign.trainer.volumeMounts" $ctx | nindent 10 }}
        securityContext: {{- include "cutalign.trainer.containerSecurityContext" $ctx | nindent 10 }}
{{- end -}}

{{/*
cutalign.trainer.pytorchjob: the PyTorchJob (kubeflow.org/v1) of one run.
Usage: {{- include "cutalign.trainer.pytorchjob" . | nindent 4 }}
*/}}
{{- define "cutalign.trainer.pytorchjob" -}}
{{- $l := .Values.launcher -}}
apiVersion: kubeflow.org/v1
kind: PyTorchJob
metadata:
  name: {{ include "cutalign.names.component" (dict "ctx" . "component" "train") }}
  namespace: {{ .Release.Namespace }}
  labels: {{- include "cutalign.trainer.podLabels" . | nindent 4 }}
spec:
  nprocPerNode: {{ include "cutalign.trainer.procsPerNode" . | quote }}
  pytorchReplicaSpecs:
    Master: {{- include "cutalign.trainer.replicaSpec" (dict "ctx" . "replicas" 1) | nindent 6 }}
    {{- if gt (int $l.workers) 0 }}
    Worker: {{- include "cutalign.trainer.replicaSpec" (dict "ctx" . "replicas" (int $l.workers)) | nindent 6 }}
    {{- end }}
  runPolicy:
    backoffLimit: {{ $l.backoffLimit }}
    ttlSecondsAfterFinished: {{ $l.ttlSecondsAfterFinished }}
    {{- if not (kindIs "invalid" $l.activeDeadlineSeconds) }}
    activeDeadlineSeconds: {{ $l.activeDeadlineSeconds }}
    {{- end }}
    cleanPodPolicy: Running
{{- end -}}

{{/*
cutalign.trainer.trainjob: the Kubeflow Trainer v2 TrainJob (trainer.kubeflow.org/v1alpha1) of one run.
Usage: {{- include "cutalign.trainer.trainjob" . | nindent 4 }}
*/}}
{{- define "cutalign.trainer.trainjob" -}}
{{- $l := .Values.launcher -}}
apiVersion: trainer.kubeflow.org/v1alpha1
kind: TrainJob
metadata:
  name: {{ include "cutalign.names.component" (dict "ctx" . "component" "train") }}
  namespace: {{ .Release.Namespace }}
  labels: {{- include "cutalign.trainer.podLabels" . | nindent 4 }}
spec:
  runtimeRef:
    name: {{ $l.trainjobRuntime }}
    apiGroup: trainer.kubeflow.org
    kind: ClusterTrainingRuntime
  trainer:
    image: {{ include "cutalign.images.ref" .Values.images.trainer }}
    command: {{- include "cutalign.trainer.command" . | nindent 6 }}
    args: []
    env: {{- include "cutalign.trainer.env" . | nindent 6 }}
    numNodes: {{ add (int $l.workers) 1 }}
    numProcPerNode: {{ include "cutalign.trainer.procsPerNode" . }}
    resourcesPerNode: {{- include "cutalign.trainer.resources" . | nindent 6 }}
  runtimePatches:
    - manager: cutalign.io/launcher
      trainingRuntimeSpec:
        template:
          spec:
            replicatedJobs:
              - name: node
                template:
                  spec:
                    template:
                      metadata:
                        labels: {{- include "cutalign.trainer.podLabels" . | nindent 26 }}
                      spec:
                        serviceAccountName: {{ include "cutalign.names.component" (dict "ctx" . "component" "trainer") }}
                        securityContext: {{- include "cutalign.trainer.podSecurityContext" . | nindent 26 }}
                        volumes: {{- include "cutalign.trainer.volumes" . | nindent 26 }}
                        containers:
                          - name: node
                            volumeMounts: {{- include "cutalign.trainer.volumeMounts" . | nindent 30 }}
                            securityContext: {{- include "cutalign.trainer.containerSecurityContext" . | nindent 30 }}
                        {{- with $l.nodeSelector }}
                        nodeSelector: {{- toYaml . | nindent 26 }}
                        {{- end }}
                        {{- with $l.tolerations }}
                        tolerations: {{- toYaml . | nindent 26 }}
                        {{- end }}
  {{- if not (kindIs "invalid" $l.activeDeadlineSeconds) }}
  activeDeadlineSeconds: {{ $l.activeDeadlineSeconds }}
  {{- end }}
{{- end -}}
