{{/*
Kafka the Strimzi way: topic names, each component's SASL user, and the ACLs of its KafkaUser.
*/}}

{{/*
cutalign.kafka.topic: the topic name of a `kafka.topic*` key, prefixed `<fullname>.` with kafka.releaseScopedTopics.
Usage: {{ include "cutalign.kafka.topic" (dict "ctx" $ "key" "topicPrompts") }}
*/}}
{{- define "cutalign.kafka.topic" -}}
{{- $name := get .ctx.Values.kafka .key -}}
{{- if .ctx.Values.kafka.releaseScopedTopics -}}
{{- printf "%s.%s" (include "cutalign.names.fullname" .ctx) $name -}}
{{- else -}}
{{- $name -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.kafka.user: a component's SASL user name: its KafkaUser's name (`<fullname>-<component>`) with
kafka.strimzi.users.enabled, else kafka.saslUsername.
Usage: {{ include "cutalign.kafka.user" (dict "ctx" $ "component" "generator") }}
*/}}
{{- define "cutalign.kafka.user" -}}
{{- if .ctx.Values.kafka.strimzi.users.enabled -}}
{{- include "cutalign.names.component" (dict "ctx" .ctx "component" .component) -}}
{{- else -}}
{{- .ctx.Values.kafka.saslUsername -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.kafka.passwordSecret: the Secret holding a component's SASL password: the one the Strimzi User
Operator writes for its KafkaUser (same name), else kafka.existingSecret.
Usage: {{ include "cutalign.kafka.passwordSecret" (dict "ctx" $ "component" "generator") }}
*/}}
{{- define "cutalign.kafka.passwordSecret" -}}
{{- if .ctx.Values.kafka.strimzi.users.enabled -}}
{{- include "cutalign.names.component" (dict "ctx" .ctx "component" .component) -}}
{{- else -}}
{{- .ctx.Values.kafka.existingSecret -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.kafka.access: per component, the topics it reads and writes and the consumer groups it joins (the
Kafka half of cutalign.components), as JSON. Every consumer also writes the dead-letter topic. The pipeline
counts dead letters in throw-away groups `cutalign-pipeline-deadletters-*` (a prefix ACL).
Usage: {{ $access := include "cutalign.kafka.access" . | fromJson }}
*/}}
{{- define "cutalign.kafka.access" -}}
{{- $v := .Values -}}
{{- toJson (dict
  "generator" (dict "read" (list "topicPrompts") "write" (list "topicSamples" "topicDeadletter") "groups" (list $v.generator.groupId))
  "judge" (dict "read" (list "topicSamples") "write" (list "topicJudgments" "topicDeadletter") "groups" (list $v.judge.groupId))
  "target-builder" (dict "read" (list "topicJudgments") "write" (list "topicDeadletter") "groups" (list $v.builder.groupId))
  "feedback" (dict "read" (list) "write" (list "topicJudgments") "groups" (list))
  "pipeline" (dict "read" (list "topicDeadletter") "write" (list "topicPrompts") "groups" (list) "groupPrefixes" (list "cutalign-pipeline-deadletters-"))
) -}}
{{- end -}}

{{/*
cutalign.kafka.acls: the KafkaUser `authorization.acls` of one component: Describe+Read on what it reads,
Describe+Write on what it writes (idempotent producers need no more since Kafka 3.0), Read on its groups.
Usage: {{- include "cutalign.kafka.acls" (dict "ctx" $ "component" "judge") | nindent 6 }}
*/}}
{{- define "cutalign.kafka.acls" -}}
{{- $ctx := .ctx -}}
{{- $a := get (include "cutalign.kafka.access" $ctx | fromJson) .component -}}
{{- range $key := $a.read }}
- resource: {type: topic, name: {{ include "cutalign.kafka.topic" (dict "ctx" $ctx "key" $key) | quote }}, patternType: literal}
  operations: [Describe, Read]
{{- end }}
{{- range $key := $a.write }}
- resource: {type: topic, name: {{ include "cutalign.kafka.topic" (dict "ctx" $ctx "key" $key) | quote }}, patternType: literal}
  operations: [Describe, Write]
{{- end }}
{{- range $group := $a.groups }}
- resource: {type: group, name: {{ $group | quote }}, patternType: literal}
  operations: [Read]
{{- end }}
{{- range $prefix := $a.groupPrefixes }}
- resource: {type: group, name: {{ $prefix | quote }}, patternType: prefix}
  operations: [Read]
{{- end }}
{{- end -}}
