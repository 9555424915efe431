{{/*
cutalign.validateValues: checks values.schema.json cannot express (cross-field rules, chart files), collected
so that one failed render lists every problem at once.
Usage: {{- include "cutalign.validateValues" . }}
*/}}
{{- define "cutalign.validateValues" -}}
{{- $v := .Values -}}
{{- $errors := list -}}
{{- range $name, $image := $v.images -}}
{{- if kindIs "map" $image -}}
{{- if and (not $image.digest) (or (not $image.tag) (eq $image.tag "latest")) -}}
{{- $errors = append $errors (printf "images.%s: pin the image: set a tag other than 'latest', or a digest" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if has $v.policy.mode (list "vllm" "tgi") -}}
{{- $server := get $v.policy $v.policy.mode -}}
{{- if and (not $server.image.digest) (or (not $server.image.tag) (eq $server.image.tag "latest")) -}}
{{- $errors = append $errors (printf "policy.%s.image: pin the image: set a tag other than 'latest', or a digest" $v.policy.mode) -}}
{{- end -}}
{{- if not $v.modelSync.baseModelUri -}}
{{- $errors = append $errors (printf "modelSync.baseModelUri: policy.mode %s serves the base model from S3 until the first promotion: set its s3://bucket/prefix" $v.policy.mode) -}}
{{- end -}}
{{- if lt (int $v.policy.gpus) 1 -}}
{{- $errors = append $errors (printf "policy.gpus: %s serves on GPUs: set at least 1 (or use policy.mode embedded on CPUs)" $v.policy.mode) -}}
{{- end -}}
{{- if and (eq (int $v.policy.rollout.maxSurge) 0) (eq (int $v.policy.rollout.maxUnavailable) 0) -}}
{{- $errors = append $errors "policy.rollout: maxSurge and maxUnavailable cannot both be 0 (a rolling update could never progress)" -}}
{{- end -}}
{{- end -}}
{{- if not $v.s3.existingSecret -}}
{{- $errors = append $errors "s3.existingSecret: name the Secret holding the S3 access and secret keys (create it first; see the chart README)" -}}
{{- end -}}
{{- if and (eq $v.minio.mode "existing") (not $v.s3.endpoint) -}}
{{- $errors = append $errors "s3.endpoint: set host:port of your S3/MinIO API, or use minio.mode=tenant" -}}
{{- end -}}
{{- if and (eq $v.minio.mode "tenant") (not $v.minio.tenant.configurationSecret) -}}
{{- $errors = append $errors "minio.tenant.configurationSecret: name the Secret holding the tenant's config.env" -}}
{{- end -}}
{{- if and (hasPrefix "SASL" $v.kafka.securityProtocol) (not $v.kafka.existingSecret) -}}
{{- $errors = append $errors (printf "kafka.existingSecret: securityProtocol %s needs the Secret with the SASL username and password" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if gt (mul (int $v.kafka.heartbeatIntervalMs) 3) (int $v.kafka.sessionTimeoutMs) -}}
{{- $errors = append $errors "kafka.heartbeatIntervalMs: must be at most a third of kafka.sessionTimeoutMs" -}}
{{- end -}}
{{- if and $v.feedback.enabled (not $v.feedback.existingSecret) -}}
{{- $errors = append $errors "feedback.existingSecret: name the Secret holding the bearer token and user-id hash salt" -}}
{{- end -}}
{{- if and $v.feedback.enabled $v.feedback.ingress.enabled (not $v.feedback.ingress.host) -}}
{{- $errors = append $errors "feedback.ingress.host: set the host name the Ingress serves" -}}
{{- end -}}
{{- if and (has $v.policy.mode (list "embedded" "kserve")) (not $v.policyServer.policyUri) -}}
{{- $errors = append $errors (printf "policyServer.policyUri: policy.mode %s serves a checkpoint: set its s3://bucket/prefix" $v.policy.mode) -}}
{{- end -}}
{{- if and (has $v.policy.mode (list "embedded" "kserve")) (gt (int $v.policy.gpus) 0) (eq $v.policyServer.device "cpu") -}}
{{- $errors = append $errors "policyServer.device: policy.gpus > 0 but the server would run on cpu; set policyServer.device=cuda" -}}
{{- end -}}
{{- if and (gt (int (index $v.policy "n")) 1) (not $v.policy.doSample) -}}
{{- $errors = append $errors "policy.n: more than one response per prompt needs policy.doSample=true (greedy decoding repeats itself)" -}}
{{- end -}}
{{- if and (not (kindIs "invalid" $v.launcher.nprocPerNode)) (gt (int $v.launcher.gpusPerNode) 0) (gt (int $v.launcher.nprocPerNode) (int $v.launcher.gpusPerNode)) -}}
{{- $errors = append $errors (printf "launcher.nprocPerNode (%v) exceeds launcher.gpusPerNode (%v): each process needs its own GPU" $v.launcher.nprocPerNode $v.launcher.gpusPerNode) -}}
{{- end -}}
{{- if and $v.pipeline.upload.enabled (not (.Files.Get "files/online_iteration.yaml")) -}}
{{- $errors = append $errors "pipeline.upload.enabled: files/online_iteration.yaml is missing from the chart; run `make pipelines` (it copies pipelines/compiled/online_iteration.yaml there) or set pipeline.upload.enabled=false" -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\n\nVALUES VALIDATION ERRORS:\n  - %s\n" (join "\n  - " $errors)) -}}
{{- end -}}
{{- end -}}
