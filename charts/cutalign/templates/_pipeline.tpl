{{/*
The release's pipeline: the PipelineWiring (cutalign.pipelines.wiring) its upload Job compiles it with.
*/}}

{{/*
cutalign.pipeline.secretEnv: a PipelineWiring SecretEnv (`{"secret", "keys": {key: env}}`) as a dict.
Usage: {{ include "cutalign.pipeline.secretEnv" (dict "secret" "s" "keys" (dict "k" "ENV")) }}
*/}}
{{- define "cutalign.pipeline.secretEnv" -}}
{{- toJson (dict "secret" .secret "keys" .keys) -}}
{{- end -}}

{{/*
cutalign.pipeline.taskLabels: the labels of the pipeline's task pods (the NetworkPolicies admit them by these).
Usage: {{- include "cutalign.pipeline.taskLabels" . | nindent 8 }}
*/}}
{{- define "cutalign.pipeline.taskLabels" -}}
{{- include "cutalign.labels.selector" (dict "ctx" . "component" "pipeline") -}}
{{- end -}}

{{/*
cutalign.pipeline.wiring: the release's PipelineWiring as JSON: the steps' ConfigMap, Secrets (with the
chart's key names), CA bundles, resources and placement (evaluation on the training hardware: one GPU when
training uses GPUs, the training pods' node selector and tolerations), and the run parameter defaults, so a
run with every default does what the release is configured to do.
Usage: {{ include "cutalign.pipeline.wiring" . }}
*/}}
{{- define "cutalign.pipeline.wiring" -}}
{{- $v := .Values -}}
{{- $l := $v.launcher -}}
{{- $w := dict
  "image" (include "cutalign.images.ref" $v.images.trainer)
  "image_pull_secrets" $v.imagePullSecrets
  "config_map" (include "cutalign.names.component" (dict "ctx" . "component" "pipeline-config"))
  "s3" (include "cutalign.pipeline.secretEnv" (dict "secret" $v.s3.existingSecret "keys" (dict $v.s3.accessKeyKey "CUTALIGN_S3_ACCESS_KEY" $v.s3.secretKeyKey "CUTALIGN_S3_SECRET_KEY")) | fromJson)
  "pod_labels" (include "cutalign.pipeline.taskLabels" . | fromYaml)
  "pod_annotations" $v.pipeline.upload.podAnnotations
  "steps" $v.pipeline.tasks.steps
  "train" $v.pipeline.tasks.train
-}}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol -}}
{{- $_ := set $w "kafka" (include "cutalign.pipeline.secretEnv" (dict "secret" (include "cutalign.kafka.passwordSecret" (dict "ctx" . "component" "pipeline")) "keys" (dict $v.kafka.saslPasswordKey "CUTALIGN_KAFKA_SASL_PASSWORD")) | fromJson) -}}
{{- end -}}
{{- with $v.judge.llm.existingSecret -}}
{{- $_ := set $w "judge" (include "cutalign.pipeline.secretEnv" (dict "secret" . "keys" (dict $v.judge.llm.apiTokenKey "CUTALIGN_JUDGE_LLM_API_TOKEN")) | fromJson) -}}
{{- end -}}
{{- with $v.policyServer.existingSecret -}}
{{- $_ := set $w "policy_admin" (include "cutalign.pipeline.secretEnv" (dict "secret" . "keys" (dict $v.policyServer.adminTokenKey "CUTALIGN_ITERATION_POLICY_ADMIN_TOKEN")) | fromJson) -}}
{{- end -}}
{{- with $v.builder.existingSecret -}}
{{- $_ := set $w "builder_admin" (include "cutalign.pipeline.secretEnv" (dict "secret" . "keys" (dict $v.builder.adminTokenKey "CUTALIGN_ITERATION_BUILDER_ADMIN_TOKEN")) | fromJson) -}}
{{- end -}}
{{- range $store := list "kafka" "s3" -}}
{{- with (include "cutalign.tls.source" (dict "ctx" $ "store" $store)) -}}
{{- $_ := set $w (printf "%s_ca" $store) (merge (fromJson .) (dict "mount_path" (include "cutalign.tls.mountPath" $store))) -}}
{{- end -}}
{{- end -}}
{{- $e := $v.pipeline.tasks.evaluate -}}
{{- $gpus := ternary (ternary 1 0 (gt (int $l.gpusPerNode) 0)) $e.gpus (kindIs "invalid" $e.gpus) -}}
{{- $_ := set $w "evaluate" (dict "cpu" (default $l.cpu $e.cpu) "memory" (default $l.memory $e.memory) "gpus" (int $gpus) "node_selector" $l.nodeSelector "tolerations" $l.tolerations) -}}
{{- $it := $v.iteration -}}
{{- $t := $v.trainer -}}
{{- $r := $v.pipeline.run -}}
{{- $_ := set $w "defaults" (dict
  "launcher" $l.backend
  "gpus" (int $l.gpusPerNode)
  "builder_url" (include "cutalign.iteration.builderUrl" .)
  "policy_admin_url" (include "cutalign.iteration.policyAdminUrl" .)
  "eval_uri" $r.evalUri
  "prompt_pool_uri" $r.promptPoolUri
  "prompts_per_iteration" (int $r.promptsPerIteration)
  "prompts_uri" $r.promptsUri
  "base_policy_uri" (default $v.policyServer.policyUri $r.basePolicyUri)
  "objective" $t.objective
  "threshold" $t.threshold
  "unlikelihood_weight" $t.unlikelihoodWeight
  "lora" $t.lora
  "lora_r" (int $t.loraR)
  "lora_alpha" (int $t.loraAlpha)
  "learning_rate" $t.learningRate
  "target_count" (int (default 0 $it.targetCount))
  "deadline_s" $it.deadlineS
  "min_count" (int $it.minCount)
  "gate_tolerance" $it.gateTolerance
) -}}
{{- toJson $w -}}
{{- end -}}

{{/*
cutalign.pipeline.uploadVolumes / uploadMounts: the wiring, /tmp and the KFP token of the upload Job and the
helm test pod (both talk to KFP).
Usage: {{- include "cutalign.pipeline.uploadVolumes" . | nindent 8 }}
*/}}
{{- define "cutalign.pipeline.uploadVolumes" -}}
- name: pipeline
  configMap:
    name: {{ include "cutalign.names.component" (dict "ctx" . "component" "pipeline-upload") }}
- name: tmp
  emptyDir: {}
{{- if .Values.pipeline.upload.projectedToken }}
- name: kfp-token
  projected:
    sources:
      - serviceAccountToken:
          audience: pipelines.kubeflow.org
          expirationSeconds: 3600
          path: token
{{- end }}
{{- end -}}

{{- define "cutalign.pipeline.uploadMounts" -}}
- name: pipeline
  mountPath: /pipeline
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- if .Values.pipeline.upload.projectedToken }}
- name: kfp-token
  mountPath: /var/run/secrets/kubeflow/pipelines
  readOnly: true
{{- end }}
{{- end -}}
