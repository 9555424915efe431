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
cutalign.env.skip: the chart-only keys of each settings section (not service settings).
Usage: {{ include "cutalign.env.skip" "kafka" }} -> used via fromJsonArray
*/}}
{{- define "cutalign.env.skip" -}}
{{- $k8s := list "enabled" "replicas" "resources" "nodeSelector" "tolerations" "affinity" -}}
{{- $skip := dict
  "kafka" (list "existingSecret" "saslUsernameKey" "saslPasswordKey" "strimzi")
  "s3" (list "existingSecret" "accessKeyKey" "secretKeyKey" "endpoint")
  "policy" (concat $k8s (list "url" "backend" "existingSecret" "apiTokenKey" "gpus" "vllm" "tgi" "kserve" "rollout" "modelVolumeSize" "shmSize" "modelSyncResources"))
  "policyServer" (list "existingSecret" "adminTokenKey")
  "modelSync" (list)
  "generator" $k8s
  "judge" (append $k8s "kserve")
  "builder" $k8s
  "feedback" (concat $k8s (list "existingSecret" "tokenKey" "userHashSaltKey" "service" "ingress"))
  "trainer" (list)
  "launcher" (list)
  "iteration" (list "builderUrl" "policyAdminUrl" "policyResource" "policyNamespace")
-}}
{{- toJson (get $skip .) -}}
{{- end -}}

{{/*
cutalign.env.sections: the settings sections as `NAME: "value"` ConfigMap lines, with the derived values
(S3 endpoint, policy URL/backend, iteration URLs) rendered by their helpers.
Usage: {{- include "cutalign.env.sections" (dict "ctx" $ "sections" (list "kafka" "s3")) | nindent 2 }}
*/}}
{{- define "cutalign.env.sections" -}}
{{- $ctx := .ctx -}}
{{- range $section := .sections }}
{{- include "cutalign.env.section" (dict "section" $section "values" (get $ctx.Values $section) "skip" (include "cutalign.env.skip" $section | fromJsonArray)) }}
{{- if eq $section "s3" }}
CUTALIGN_S3_ENDPOINT: {{ include "cutalign.s3.endpoint" $ctx | quote }}
{{- else if eq $section "policy" }}
CUTALIGN_POLICY_URL: {{ include "cutalign.policy.url" $ctx | quote }}
CUTALIGN_POLICY_BACKEND: {{ include "cutalign.policy.backend" $ctx | quote }}
{{- else if eq $section "iteration" }}
{{- with (include "cutalign.iteration.builderUrl" $ctx) }}
CUTALIGN_ITERATION_BUILDER_URL: {{ . | quote }}
{{- end }}
{{- with (include "cutalign.iteration.policyAdminUrl" $ctx) }}
CUTALIGN_ITERATION_POLICY_ADMIN_URL: {{ . | quote }}
{{- end }}
{{- with (include "cutalign.iteration.policyResource" $ctx) }}
CUTALIGN_ITERATION_POLICY_RESOURCE: {{ . | quote }}
CUTALIGN_ITERATION_POLICY_NAMESPACE: {{ default $ctx.Release.Namespace $ctx.Values.iteration.policyNamespace | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{/*
cutalign.env.secrets: the Secret-backed env of a service: S3 keys always, Kafka SASL when kafka.existingSecret
is set, the policy token for policy clients and the admin token for the policy server when their Secrets are set.
Usage: {{- include "cutalign.env.secrets" (dict "ctx" $ "policyClient" true) | nindent 12 }}
*/}}
{{- define "cutalign.env.secrets" -}}
{{- $v := .ctx.Values -}}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_S3_ACCESS_KEY" "secret" $v.s3.existingSecret "key" $v.s3.accessKeyKey) }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_S3_SECRET_KEY" "secret" $v.s3.existingSecret "key" $v.s3.secretKeyKey) }}
{{- if $v.kafka.existingSecret }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_KAFKA_SASL_USERNAME" "secret" $v.kafka.existingSecret "key" $v.kafka.saslUsernameKey) }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_KAFKA_SASL_PASSWORD" "secret" $v.kafka.existingSecret "key" $v.kafka.saslPasswordKey) }}
{{- end }}
{{- if and .policyClient $v.policy.existingSecret }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_POLICY_API_TOKEN" "secret" $v.policy.existingSecret "key" $v.policy.apiTokenKey) }}
{{- end }}
{{- if and .policyServer $v.policyServer.existingSecret }}
{{ include "cutalign.env.secretRef" (dict "name" "CUTALIGN_POLICY_SERVER_ADMIN_TOKEN" "secret" $v.policyServer.existingSecret "key" $v.policyServer.adminTokenKey) }}
{{- end }}
{{- end -}}
