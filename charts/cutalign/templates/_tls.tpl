{{/*
Trust of private CAs: the CA bundle of the brokers (kafka.tls) and of the S3 endpoint (s3.tls) is mounted into
the pods that talk to them, and the settings (CUTALIGN_KAFKA_SSL_CA_LOCATION, CUTALIGN_S3_CA_BUNDLE) name the
file under the mount.
*/}}

{{/*
cutalign.tls.mountPath: where a store's CA bundle is mounted (`kafka` or `s3`).
Usage: {{ include "cutalign.tls.mountPath" "kafka" }}
*/}}
{{- define "cutalign.tls.mountPath" -}}
{{- printf "/etc/cutalign/ca/%s" . -}}
{{- end -}}

{{/*
cutalign.tls.source: the CA bundle's volume source of a store as JSON (`{"kind","name"}`), empty when none.
Usage: {{ $src := include "cutalign.tls.source" (dict "ctx" $ "store" "s3") }}
*/}}
{{- define "cutalign.tls.source" -}}
{{- $t := get .ctx.Values .store | dig "tls" dict -}}
{{- if $t.caSecret -}}
{{- toJson (dict "kind" "secret" "name" $t.caSecret) -}}
{{- else if $t.caConfigMap -}}
{{- toJson (dict "kind" "configMap" "name" $t.caConfigMap) -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.tls.caFile: the path of a store's CA file inside the pod, empty when none is configured.
Usage: {{ include "cutalign.tls.caFile" (dict "ctx" $ "store" "kafka") }}
*/}}
{{- define "cutalign.tls.caFile" -}}
{{- if include "cutalign.tls.source" . -}}
{{- printf "%s/%s" (include "cutalign.tls.mountPath" .store) (get .ctx.Values .store).tls.caKey -}}
{{- end -}}
{{- end -}}

{{/*
cutalign.tls.volumes / cutalign.tls.volumeMounts: the CA bundle volumes of a component (cutalign.components
says whether it talks to Kafka and S3).
Usage: {{- include "cutalign.tls.volumes" (dict "ctx" $ "component" "generator") | nindent 8 }}
*/}}
{{- define "cutalign.tls.volumes" -}}
{{- $ctx := .ctx -}}
{{- $c := include "cutalign.component" . | fromJson -}}
{{- range $store := list "kafka" "s3" }}
{{- $src := include "cutalign.tls.source" (dict "ctx" $ctx "store" $store) }}
{{- if and $src (get $c $store) }}
{{- $s := $src | fromJson }}
- name: {{ $store }}-ca
  {{- if eq $s.kind "secret" }}
  secret:
    secretName: {{ $s.name }}
  {{- else }}
  configMap:
    name: {{ $s.name }}
  {{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "cutalign.tls.volumeMounts" -}}
{{- $ctx := .ctx -}}
{{- $c := include "cutalign.component" . | fromJson -}}
{{- range $store := list "kafka" "s3" }}
{{- if and (include "cutalign.tls.source" (dict "ctx" $ctx "store" $store)) (get $c $store) }}
- name: {{ $store }}-ca
  mountPath: {{ include "cutalign.tls.mountPath" $store }}
  readOnly: true
{{- end }}
{{- end }}
{{- end -}}
