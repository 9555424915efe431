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
{{- if and (hasPrefix "SASL" $v.kafka.securityProtocol) (not $v.kafka.strimzi.users.enabled) (not (and $v.kafka.existingSecret $v.kafka.saslUsername)) -}}
{{- $errors = append $errors (printf "kafka.existingSecret: securityProtocol %s needs the Secret with the SASL password and kafka.saslUsername, or kafka.strimzi.users.enabled (a KafkaUser per component)" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if and $v.kafka.strimzi.users.enabled (not $v.kafka.strimzi.enabled) -}}
{{- $errors = append $errors "kafka.strimzi.users.enabled: needs kafka.strimzi.enabled (the KafkaUsers belong to a Strimzi cluster)" -}}
{{- end -}}
{{- if and $v.kafka.strimzi.users.enabled (ne $v.kafka.saslMechanism "SCRAM-SHA-512") -}}
{{- $errors = append $errors (printf "kafka.saslMechanism: Strimzi KafkaUsers authenticate with SCRAM-SHA-512, not %s" $v.kafka.saslMechanism) -}}
{{- end -}}
{{- if and $v.kafka.tls.caSecret (not (hasSuffix "SSL" $v.kafka.securityProtocol)) -}}
{{- $errors = append $errors (printf "kafka.tls.caSecret: a CA is only used with securityProtocol SSL or SASL_SSL, not %s" $v.kafka.securityProtocol) -}}
{{- end -}}
{{- if and $v.s3.tls.caSecret $v.s3.tls.caConfigMap -}}
{{- $errors = append $errors "s3.tls: set caSecret or caConfigMap, not both" -}}
{{- end -}}
{{- if and (eq $v.minio.mode "tenant") $v.minio.tenant.requestAutoCert (not $v.s3.secure) -}}
{{- $errors = append $errors "s3.secure: minio.tenant.requestAutoCert serves https only: set s3.secure=true (and s3.tls.caConfigMap=kube-root-ca.crt)" -}}
{{- end -}}
{{- if gt (mul (int $v.kafka.heartbeatIntervalMs) 3) (int $v.kafka.sessionTimeoutMs) -}}
{{- $errors = append $errors "kafka.heartbeatIntervalMs: must be at most a third of kafka.sessionTimeoutMs" -}}
{{- end -}}
{{- if and (include "cutalign.iteration.builderUrl" .) (not $v.builder.existingSecret) -}}
{{- $errors = append $errors "builder.existingSecret: name the Secret holding the target builder's seal token (the builder requires it on POST /seal; the pipeline's seal step sends it)" -}}
{{- end -}}
{{- if and (eq $v.judge.judge "llm") (not $v.judge.llm.url) -}}
{{- $errors = append $errors "judge.llm.url: the llm judge (the judge service and the pipeline's evaluation) calls an LLM server: set its base URL, or set judge.judge to your own judge" -}}
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
{{- if and $v.metrics.dashboard.enabled (not (.Files.Get "files/dashboard.json")) -}}
{{- $errors = append $errors "metrics.dashboard.enabled: files/dashboard.json is missing from the chart" -}}
{{- end -}}
{{- if and $v.pipeline.recurring.enabled (not $v.pipeline.upload.enabled) -}}
{{- $errors = append $errors "pipeline.recurring.enabled: the upload Job keeps the recurring run: needs pipeline.upload.enabled" -}}
{{- end -}}
{{- if and $v.pipeline.recurring.enabled (not $v.pipeline.run.evalUri) -}}
{{- $errors = append $errors "pipeline.run.evalUri: a recurring run uses the defaults: set the eval set (and pipeline.run.promptPoolUri or promptsUri)" -}}
{{- end -}}
{{- if $errors -}}
{{- fail (printf "\n\nVALUES VALIDATION ERRORS:\n  - %s\n" (join "\n  - " $errors)) -}}
{{- end -}}
{{- end -}}
