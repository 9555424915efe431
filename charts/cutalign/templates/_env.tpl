{{/*
Service settings as environment: values keys become CUTALIGN_<SECTION>_<KEY> (camelCase -> UPPER_SNAKE).
*/}}

{{/*
cutalign.env.value: one value as the string pydantic-settings parses back: whole numbers without an exponent
(Helm reads YAML numbers as float64), booleans lower-case, lists and maps as JSON.
Usage: {{ include "cutalign.env.value" 8388608 }}
*/}}
{{- define "cutalign.env.value" -}}
{{- if or (kindIs "slice" .) (kindIs "map" .) -}}
{{- toJson . -}}
{{- else if and (kindIs "float64" .) (eq (float64 .) (floor .)) -}}
{{- int64 . -}}
{{- else -}}
{{- toString . -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.env.name: CUTALIGN_<SECTION>_<KEY> for a values key.
Usage: {{ include "cutalign.env.name" (dict "section" "kafka" "key" "bootstrapServers") }}
*/}}
{{- define "cutalign.env.name" -}}
{{- printf "CUTALIGN_%s_%s" (include "cutalign.env.snake" .section) (include "cutalign.env.snake" .key) | upper -}}
{{- end -}}

{{/*
cutalign.env.snake: camelCase -> snake_case, keeping acronyms apart (alignPRatio -> align_P_Ratio).
Usage: {{ include "cutalign.env.snake" "policyServer" }}
*/}}
{{- define "cutalign.env.snake" -}}
{{- regexReplaceAll "([A-Z])([A-Z][a-z])" (regexReplaceAll "([a-z0-9])([A-Z])" . "${1}_${2}") "${1}_${2}" -}}
{{- end -}}

{{/*
cutalign.env.section: the settings keys of a values section as `NAME: "value"` lines (ConfigMap data);
keys in `skip` (chart-only keys such as existingSecret) and null values are left out.
Usage: {{ include "cutalign.env.section" (dict "section" "kafka" "values" .Values.kafka "skip" (list "strimzi")) }}
*/}}
{{- define "cutalign.env.section" -}}
{{- $section := .section -}}
{{- range $key, $value := .values }}
{{- if and (not (has $key $.skip)) (not (kindIs "invalid" $value)) }}
{{ include "cutalign.env.name" (dict "section" $section "key" $key) }}: {{ include "cutalign.env.value" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
cutalign.env.sectionList: the same as a container `env:` list (`- name: ... value: ...`).
Usage: {{- include "cutalign.env.sectionList" (dict "section" "trainer" "values" .Values.trainer "skip" list) | nindent 12 }}
*/}}
{{- define "cutalign.env.sectionList" -}}
{{- $section := .section -}}
{{- range $key, $value := .values }}
{{- if and (not (has $key $.skip)) (not (kindIs "invalid" $value)) }}
- name: {{ include "cutalign.env.name" (dict "section" $section "key" $key) }}
  value: {{ include "cutalign.env.value" $value | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
cutalign.env.secretRef: one env var read from a Secret key.
Usage: {{- include "cutalign.env.secretRef" (dict "name" "CUTALIGN_S3_ACCESS_KEY" "secret" "cutalign-s3" "key" "access-key") | nindent 12 }}
*/}}
{{- define "cutalign.env.secretRef" -}}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{/*
cutalign.components: what each component reads and needs, as JSON (the one table the ConfigMaps, env, Secrets,
CA mounts, KafkaUsers and NetworkPolicies are derived from). The policy pod of modes vllm/tgi holds a vLLM/TGI
server and the model sync (`model-sync`), so its ConfigMap has the sync's sections. `config`: the ConfigMap it takes
(`<fullname>-<config>-config`); `sections`: the settings sections in it; `kafka`/`s3`: it talks to the bus /
the store (credentials and CA bundles); `policyClient`, `policyServer`, `builderAdmin`, `llmJudge`: the tokens it gets.
Usage: {{ $c := index (include "cutalign.components" . | fromJson) "generator" }}
*/}}
{{- define "cutalign.components" -}}
{{- toJson (dict
  "generator" (dict "config" "generator" "sections" (list "kafka" "s3" "policy" "generator") "kafka" true "s3" true "policyClient" true)
  "judge" (dict "config" "judge" "sections" (list "kafka" "judge") "kafka" true "llmJudge" true)
  "judge-model" (dict "config" "judge" "sections" (list "kafka" "judge") "llmJudge" true)
  "target-builder" (dict "config" "target-builder" "sections" (list "kafka" "s3" "builder") "kafka" true "s3" true "builderAdmin" true)
  "feedback" (dict "config" "feedback" "sections" (list "kafka" "s3" "feedback") "kafka" true "s3" true)
  "policy" (dict "config" "policy" "sections" (ternary (list "s3" "modelSync") (list "s3" "policy" "policyServer") (has .Values.policy.mode (list "vllm" "tgi"))) "s3" true "policyServer" true)
  "model-sync" (dict "config" "policy" "s3" true)
  "pipeline" (dict "config" "pipeline" "sections" (list "kafka" "s3" "judge" "builder" "iteration" "launcher" "trainer") "kafka" true "s3" true "llmJudge" true)
  "trainer" (dict "config" "pipeline" "sections" (list) "s3" true)
) -}}
{{- end -}}

{{/*
cutalign.component: one component's entry of cutalign.components (an unknown component: the empty entry).
Usage: {{ $c := include "cutalign.component" (dict "ctx" $ "component" "judge") | fromJson }}
*/}}
{{- define "cutalign.component" -}}
{{- toJson (get (include "cutalign.components" .ctx | fromJson) .component | default dict) -}}
{{- end -}}

{{/*
cutalign.env.skip: the chart-only keys of each settings section (not service settings, or rendered by a helper).
Usage: {{ include "cutalign.env.skip" "kafka" }} -> used via fromJsonArray
*/}}
{{- define "cutalign.env.skip" -}}
{{- $k8s := list "enabled" "replicas" "resources" "nodeSelector" "tolerations" "affinity" "extraEnv" "extraEnvFrom" "extraVolumes" "extraVolumeMounts" "podAnnotations" "podLabels" "pdb" -}}
{{- $skip := dict
  "kafka" (list "existingSecret" "saslUsername" "saslPasswordKey" "strimzi" "tls" "releaseScopedTopics" "topicPrompts" "topicSamples" "topicJudgments" "topicDeadletter")
  "s3" (list "existingSecret" "accessKeyKey" "secretKeyKey" "endpoint" "tls")
  "policy" (concat $k8s (list "url" "backend" "existingSecret" "apiTokenKey" "gpus" "vllm" "tgi" "kserve" "rollout" "modelVolumeSize" "shmSize" "modelSyncResources"))
  "policyServer" (list "existingSecret" "adminTokenKey")
  "modelSync" (list)
  "generator" $k8s
  "judge" (concat $k8s (list "kserve" "llm"))
  "builder" (concat $k8s (list "existingSecret" "adminTokenKey"))
  "feedback" (concat $k8s (list "existingSecret" "tokenKey" "userHashSaltKey" "service" "ingress"))
  "trainer" (list)
  "launcher" (list)
  "iteration" (list "builderUrl" "policyAdminUrl" "policyResource" "policyNamespace")
-}}
{{- toJson (get $skip .) -}}
{{- end -}}

{{/*
cutalign.config.data: the `CUTALIGN_*` settings of one component as ConfigMap data lines: its sections (see
cutalign.components), with the derived values rendered by their helpers (topic names, the component's SASL
user, CA bundle paths, S3 endpoint, policy URL/backend, the LLM judge's endpoint, the launcher's derived keys).
Usage: {{- include "cutalign.config.data" (dict "ctx" $ "component" "generator") | nindent 2 }}
*/}}
{{- define "cutalign.config.data" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
{{- $c := include "cutalign.component" . | fromJson -}}
{{- range $section := $c.sections }}
{{- include "cutalign.env.section" (dict "section" $section "values" (get $v $section) "skip" (include "cutalign.env.skip" $section | fromJsonArray)) }}
{{- if eq $section "kafka" }}
{{- range $key := list "topicPrompts" "topicSamples" "topicJudgments" "topicDeadletter" }}
{{ include "cutalign.env.name" (dict "section" "kafka" "key" $key) }}: {{ include "cutalign.kafka.topic" (dict "ctx" $ctx "key" $key) | quote }}
{{- end }}
{{- if hasPrefix "SASL" $v.kafka.securityProtocol }}
CUTALIGN_KAFKA_SASL_USERNAME: {{ include "cutalign.kafka.user" (dict "ctx" $ctx "component" $c.config) | quote }}
{{- end }}
{{- with (include "cutalign.tls.caFile" (dict "ctx" $ctx "store" "kafka")) }}
CUTALIGN_KAFKA_SSL_CA_LOCATION: {{ . | quote }}
{{- end }}
{{- else if eq $section "s3" }}
CUTALIGN_S3_ENDPOINT: {{ include "cutalign.s3.endpoint" $ctx | quote }}
{{- with (include "cutalign.tls.caFile" (dict "ctx" $ctx "store" "s3")) }}
CUTALIGN_S3_CA_BUNDLE: {{ . | quote }}
{{- end }}
{{- else if eq $section "policy" }}
CUTALIGN_POLICY_URL: {{ include "cutalign.policy.url" $ctx | quote }}
CUTALIGN_POLICY_BACKEND: {{ include "cutalign.policy.backend" $ctx | quote }}
{{- else if eq $section "judge" }}
{{- $llm := $v.judge.llm }}
{{- if $llm.url }}
CUTALIGN_JUDGE_LLM_URL: {{ $llm.url | quote }}
{{- end }}
CUTALIGN_JUDGE_LLM_BACKEND: {{ $llm.backend | quote }}
CUTALIGN_JUDGE_LLM_MODEL_NAME: {{ $llm.modelName | quote }}
CUTALIGN_JUDGE_LLM_TIMEOUT_S: {{ include "cutalign.env.value" $llm.timeoutS | quote }}
CUTALIGN_JUDGE_LLM_MAX_RETRIES: {{ include "cutalign.env.value" $llm.maxRetries | quote }}
CUTALIGN_JUDGE_LLM_MAX_IN_FLIGHT: {{ include "cutalign.env.value" $llm.maxInFlight | quote }}
{{- else if eq $section "launcher" }}
CUTALIGN_LAUNCHER_NAMESPACE: {{ $ctx.Release.Namespace | quote }}
CUTALIGN_LAUNCHER_IMAGE: {{ include "cutalign.images.ref" $v.images.trainer | quote }}
CUTALIGN_LAUNCHER_IMAGE_PULL_POLICY: {{ $v.images.pullPolicy | quote }}
CUTALIGN_LAUNCHER_SERVICE_ACCOUNT: {{ include "cutalign.names.component" (dict "ctx" $ctx "component" "trainer") | quote }}
CUTALIGN_LAUNCHER_S3_SECRET: {{ $v.s3.existingSecret | quote }}
CUTALIGN_LAUNCHER_S3_ACCESS_KEY_KEY: {{ $v.s3.accessKeyKey | quote }}
CUTALIGN_LAUNCHER_S3_SECRET_KEY_KEY: {{ $v.s3.secretKeyKey | quote }}
CUTALIGN_LAUNCHER_POD_LABELS: {{ include "cutalign.trainer.podLabels" $ctx | fromYaml | toJson | quote }}
{{- with $v.s3.tls.caSecret }}
CUTALIGN_LAUNCHER_S3_CA_SECRET: {{ . | quote }}
{{- else }}
{{- with $v.s3.tls.caConfigMap }}
CUTALIGN_LAUNCHER_S3_CA_CONFIG_MAP: {{ . | quote }}
{{- end }}
{{- end }}
{{- with (include "cutalign.iteration.policyResource" $ctx) }}
CUTALIGN_ITERATION_POLICY_RESOURCE: {{ . | quote }}
CUTALIGN_ITERATION_POLICY_NAMESPACE: {{ default $ctx.Release.Namespace $ctx.Values.iteration.policyNamespace | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
cutalign.env.secrets: the Secret-backed env of a component (see cutalign.components): S3 keys, its SASL
password (its own KafkaUser's Secret, or kafka.existingSecret), the policy token for policy clients, the admin
token for the policy server, the seal token for the target builder, the LLM judge's token.
Usage: {{- include "cutalign.env.secrets" (dict "ctx" $ "component" "generator") | nindent 12 }}
*/}}
{{- define "cutalign.env.secrets" -}}
{{- $v := .ctx.Values -}}
{{- $c := include "cutalign.component" . | fromJson -}}
{{- if $c.s3 }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_S3_ACCESS_KEY" "secret" $v.s3.existingSecret "key" $v.s3.accessKeyKey) }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_S3_SECRET_KEY" "secret" $v.s3.existingSecret "key" $v.s3.secretKeyKey) }}
{{- end }}
{{- if and $c.kafka (hasPrefix "SASL" $v.kafka.securityProtocol) }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_KAFKA_SASL_PASSWORD" "secret" (include "cutalign.kafka.passwordSecret" (dict "ctx" .ctx "component" $c.config)) "key" $v.kafka.saslPasswordKey) }}
{{- end }}
{{- if and $c.policyClient $v.policy.existingSecret }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_POLICY_API_TOKEN" "secret" $v.policy.existingSecret "key" $v.policy.apiTokenKey) }}
{{- end }}
{{- if and $c.policyServer $v.policyServer.existingSecret }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_POLICY_SERVER_ADMIN_TOKEN" "secret" $v.policyServer.existingSecret "key" $v.policyServer.adminTokenKey) }}
{{- end }}
{{- if and $c.builderAdmin $v.builder.existingSecret }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_BUILDER_ADMIN_TOKEN" "secret" $v.builder.existingSecret "key" $v.builder.adminTokenKey) }}
{{- end }}
{{- if and $c.llmJudge $v.judge.llm.existingSecret }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_JUDGE_LLM_API_TOKEN" "secret" $v.judge.llm.existingSecret "key" $v.judge.llm.apiTokenKey) }}
{{- end }}
{{- end -}}
