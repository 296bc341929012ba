{{/*
Helpers. Every helper takes a chart context (.Values, .Release, .Chart): this chart's own, or — from an application
chart that uses the sidecar — `(index .Subcharts "quota-authority")`, the subchart's context with the parent's
overrides merged in. So the sidecar and the resources this chart renders for it agree on names and values.
*/}}

{{- define "quota-authority.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "quota-authority.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "quota-authority.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "quota-authority.selectorLabels" -}}
app.kubernetes.io/name: {{ include "quota-authority.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* The server pods only: hook Jobs and the test Pod share name/instance but must never receive Service traffic. */}}
{{- define "quota-authority.serverSelectorLabels" -}}
{{ include "quota-authority.selectorLabels" . }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "quota-authority.labels" -}}
helm.sh/chart: {{ include "quota-authority.chart" . }}
{{ include "quota-authority.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: quota-authority
{{- end -}}

{{- define "quota-authority.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "quota-authority.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "quota-authority.image" -}}
{{- $i := .Values.image -}}
{{- if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository (default .Chart.AppVersion $i.tag) -}}
{{- end -}}
{{- end -}}

{{/* The bind address: loopback for the sidecar, every interface for the shared service. */}}
{{- define "quota-authority.host" -}}
{{- if .Values.server.host -}}{{ .Values.server.host }}{{- else if eq .Values.mode "sidecar" -}}127.0.0.1{{- else -}}0.0.0.0{{- end -}}
{{- end -}}

{{- define "quota-authority.secretName" -}}
{{- default (include "quota-authority.fullname" .) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* Secret-backed variables: [env var, key in an existing Secret, inline value]. The chart's own Secret uses the
env var names as keys. */}}
{{- define "quota-authority.secretVars" -}}
{{- $s := .Values.secrets -}}
{{- $gen := include "quota-authority.generatedTokens" . | fromJson -}}
{{- list (list "DATABASE_URL" $s.keys.databaseUrl .Values.database.url) (list "REDIS_URL" $s.keys.redisUrl .Values.redis.url) (list "QUOTA_SERVICE_TOKEN" $s.keys.serviceToken (default $gen.QUOTA_SERVICE_TOKEN $s.serviceToken)) (list "QUOTA_ADMIN_TOKEN" $s.keys.adminToken (default $gen.QUOTA_ADMIN_TOKEN $s.adminToken)) (list "REDIS_PASSWORD" $s.keys.redisPassword $s.redisPassword) | toJson -}}
{{- end -}}

{{/* Tokens the chart makes when none is given and there is no existingSecret: the admin token always (otherwise
each pod would generate its own), the service token when the data plane is not on loopback and not mTLS. They are
kept across upgrades (read back from the release's Secret with lookup) and made once per render (memoised in
.Values, since every helper that needs them runs this). */}}
{{- define "quota-authority.generatedTokens" -}}
{{- $s := .Values.secrets -}}
{{- if not (hasKey $s "__generated") -}}
{{- $gen := dict -}}
{{- if not $s.existingSecret -}}
{{- $old := dict -}}
{{- $found := lookup "v1" "Secret" .Release.Namespace (include "quota-authority.fullname" .) -}}
{{- if and $found $found.data -}}{{- $old = $found.data -}}{{- end -}}
{{- $wanted := list "QUOTA_ADMIN_TOKEN" -}}
{{- if and (not .Values.tls.clientAuth) (not (regexMatch "^(127\\.|::1$|localhost$)" (include "quota-authority.host" .))) -}}
{{- $wanted = append $wanted "QUOTA_SERVICE_TOKEN" -}}
{{- end -}}
{{- range $wanted -}}
{{- if hasKey $old . -}}
{{- $_ := set $gen . (index $old . | b64dec) -}}
{{- else -}}
{{- $_ := set $gen . (randAlphaNum 43) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $_ := set $s "__generated" $gen -}}
{{- end -}}
{{- index $s "__generated" | toJson -}}
{{- end -}}

{{/* "true" when the chart creates a Secret (something inline and no existingSecret). */}}
{{- define "quota-authority.createSecret" -}}
{{- if not .Values.secrets.existingSecret -}}
{{- range (include "quota-authority.secretVars" . | fromJsonArray) -}}{{- if index . 2 -}}true{{- end -}}{{- end -}}
{{- end -}}
{{- end -}}

{{- define "quota-authority.secretData" -}}
{{- range (include "quota-authority.secretVars" . | fromJsonArray) }}
{{- if index . 2 }}
{{ index . 0 }}: {{ index . 2 | b64enc | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Is a variable (by env name) provided, by the existing Secret (a key name is set) or inline? */}}
{{- define "quota-authority.has" -}}
{{- $want := .name -}}
{{- $ctx := .ctx -}}
{{- range (include "quota-authority.secretVars" $ctx | fromJsonArray) -}}
{{- if eq (index . 0) $want -}}
{{- if $ctx.Values.secrets.existingSecret -}}{{- if index . 1 -}}true{{- end -}}{{- else if index . 2 -}}true{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "quota-authority.hasDatabase" -}}{{ include "quota-authority.has" (dict "ctx" . "name" "DATABASE_URL") }}{{- end -}}
{{- define "quota-authority.hasRedis" -}}{{ if or .Values.redis.host .Values.redis.clusterNodes }}true{{ else }}{{ include "quota-authority.has" (dict "ctx" . "name" "REDIS_URL") }}{{ end }}{{- end -}}

{{/* secretKeyRef env entries. `secretName` lets the migration hook read the hook-time copy. */}}
{{- define "quota-authority.secretEnv" -}}
{{- $ctx := .ctx -}}
{{- $name := .secretName -}}
{{- $only := .only | default list -}}
{{- range (include "quota-authority.secretVars" $ctx | fromJsonArray) }}
{{- $var := index . 0 }}
{{- if and (or (not $only) (has $var $only)) (not (and (eq $var "REDIS_URL") $ctx.Values.redis.host)) }}
{{- if $ctx.Values.secrets.existingSecret }}
{{- if index . 1 }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $ctx.Values.secrets.existingSecret }}
      key: {{ index . 1 }}
{{- end }}
{{- else if index . 2 }}
- name: {{ $var }}
  valueFrom:
    secretKeyRef:
      name: {{ $name }}
      key: {{ $var }}
{{- end }}
{{- end }}
{{- end }}
{{- end -}}

{{- define "quota-authority.plansConfigMap" -}}
{{- default (printf "%s-plans" (include "quota-authority.fullname" .)) .Values.plans.existingConfigMap -}}
{{- end -}}

{{- define "quota-authority.hasPlans" -}}
{{- if or .Values.plans.content .Values.plans.existingConfigMap -}}true{{- end -}}
{{- end -}}

{{/* Plans go through a hook Job only for the shared service on Postgres; otherwise each pod applies them at start. */}}
{{- define "quota-authority.plansByHook" -}}
{{- if and (include "quota-authority.hasPlans" .) (eq .Values.mode "shared") (eq .Values.plans.applyWith "hook") (include "quota-authority.hasDatabase" .) -}}true{{- end -}}
{{- end -}}

{{- define "quota-authority.migrateByJob" -}}
{{- if and .Values.migrations.job (eq .Values.mode "shared") (include "quota-authority.hasDatabase" .) -}}true{{- end -}}
{{- end -}}

{{/* Rules across values that a JSON schema cannot say; each fails with what to set. */}}
{{- define "quota-authority.validate" -}}
{{- $v := .Values -}}
{{- if eq $v.mode "shared" -}}
{{- if and (not (include "quota-authority.has" (dict "ctx" . "name" "QUOTA_SERVICE_TOKEN"))) (not $v.tls.clientAuth) (not (regexMatch "^(127\\.|::1$|localhost$)" (include "quota-authority.host" .))) -}}
{{- fail "quota-authority: mode=shared binds a non-loopback address, so the data plane needs secrets.serviceToken (or secrets.existingSecret with secrets.keys.serviceToken) or tls.clientAuth=true" -}}
{{- end -}}
{{- $replicas := ternary $v.autoscaling.maxReplicas $v.replicaCount $v.autoscaling.enabled | int -}}
{{- if and (gt $replicas 1) (not (and (include "quota-authority.hasDatabase" .) (include "quota-authority.hasRedis" .))) -}}
{{- fail "quota-authority: more than one replica needs Postgres (database.url or secrets.existingSecret) and Redis (redis.url, redis.host, redis.clusterNodes or secrets.existingSecret): embedded PGlite and in-process counters are per pod" -}}
{{- end -}}
{{- end -}}
{{- if and $v.tls.enabled (not $v.tls.secretName) -}}
{{- fail "quota-authority: tls.enabled=true needs tls.secretName (a kubernetes.io/tls Secret)" -}}
{{- end -}}
{{- if and $v.tls.clientAuth (not $v.tls.enabled) -}}
{{- fail "quota-authority: tls.clientAuth=true needs tls.enabled=true" -}}
{{- end -}}
{{- if and $v.redis.host $v.redis.url -}}
{{- fail "quota-authority: set redis.url or redis.host, not both" -}}
{{- end -}}
{{- if and $v.plans.content $v.plans.existingConfigMap -}}
{{- fail "quota-authority: set plans.content or plans.existingConfigMap, not both" -}}
{{- end -}}
{{- if or $v.gateway.grpcRoute.enabled $v.gateway.httpRoute.enabled -}}
{{- if not $v.gateway.parentRefs -}}
{{- fail "quota-authority: gateway routes need gateway.parentRefs (the Gateway to attach to)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "quota-authority.checksums" -}}
{{- if include "quota-authority.createSecret" . }}
checksum/secret: {{ include "quota-authority.secretData" . | sha256sum }}
{{- end }}
{{- if .Values.plans.content }}
checksum/plans: {{ .Values.plans.content | sha256sum }}
{{- end }}
{{- end -}}

{{/* Non-secret configuration: every QUOTA_* setting of src/config/config.ts. */}}
{{- define "quota-authority.env" -}}
{{- $v := .Values -}}
- name: QUOTA_HOST
  value: {{ include "quota-authority.host" . | quote }}
- name: QUOTA_GRPC_PORT
  value: {{ $v.server.grpcPort | quote }}
- name: QUOTA_HTTP_PORT
  value: {{ $v.server.httpPort | quote }}
- name: QUOTA_MAX_MESSAGE_BYTES
  value: {{ $v.server.maxMessageBytes | int64 | quote }}
- name: QUOTA_ALLOWED_ORIGINS
  value: {{ join "," $v.server.allowedOrigins | quote }}
- name: QUOTA_ADMIN_RATE_PER_MINUTE
  value: {{ $v.server.adminRatePerMinute | quote }}
- name: QUOTA_LOG_LEVEL
  value: {{ $v.server.logLevel | quote }}
- name: QUOTA_DEMO
  value: {{ $v.server.demo | quote }}
- name: QUOTA_SHUTDOWN_GRACE_MS
  value: {{ $v.shutdown.graceMs | int64 | quote }}
- name: QUOTA_SHUTDOWN_DELAY_MS
  value: {{ $v.shutdown.delayMs | int64 | quote }}
- name: QUOTA_STORE_DEADLINE_MS
  value: {{ $v.counters.storeDeadlineMs | int64 | quote }}
- name: QUOTA_FLUSH_INTERVAL_MS
  value: {{ $v.counters.flushIntervalMs | int64 | quote }}
- name: QUOTA_RECONCILE_INTERVAL_MS
  value: {{ $v.counters.reconcileIntervalMs | int64 | quote }}
- name: QUOTA_RETENTION_GRACE_MS
  value: {{ $v.counters.retentionGraceMs | int64 | quote }}
- name: QUOTA_WORKERS
  value: {{ $v.server.workers | int64 | quote }}
- name: QUOTA_HEADERS_TIMEOUT_MS
  value: {{ $v.server.headersTimeoutMs | int64 | quote }}
- name: QUOTA_IDLE_TIMEOUT_MS
  value: {{ $v.server.idleTimeoutMs | int64 | quote }}
- name: QUOTA_MAX_CONCURRENT_STREAMS
  value: {{ $v.server.maxConcurrentStreams | int64 | quote }}
- name: QUOTA_GET_LIMITS_RATE_PER_MINUTE
  value: {{ $v.server.getLimitsRatePerMinute | int64 | quote }}
- name: QUOTA_IDEMPOTENCY_WAIT_MS
  value: {{ $v.server.idempotencyWaitMs | int64 | quote }}
- name: QUOTA_DB_CONNECT_TIMEOUT_MS
  value: {{ $v.database.connectTimeoutMs | int64 | quote }}
- name: QUOTA_DB_STATEMENT_TIMEOUT_MS
  value: {{ $v.database.statementTimeoutMs | int64 | quote }}
- name: QUOTA_KEY_CACHE_TTL_MS
  value: {{ $v.keyCache.ttlMs | int64 | quote }}
- name: QUOTA_KEY_CACHE_NEGATIVE_TTL_MS
  value: {{ $v.keyCache.negativeTtlMs | int64 | quote }}
{{- if $v.keyCache.maxEntries }}
- name: QUOTA_KEY_CACHE_MAX_ENTRIES
  value: {{ $v.keyCache.maxEntries | int64 | quote }}
{{- end }}
- name: QUOTA_REDIS_ALLOW_EVICTION
  value: {{ $v.redis.allowEviction | quote }}
{{- if $v.envoy }}
- name: QUOTA_ENVOY_CONFIG
  value: {{ toJson $v.envoy | quote }}
{{- end }}
- name: QUOTA_DATA_DIR
  value: {{ $v.database.dataDir | quote }}
- name: QUOTA_REDIS_KEY_PREFIX
  value: {{ $v.redis.keyPrefix | quote }}
{{- if $v.redis.clusterNodes }}
- name: REDIS_CLUSTER_NODES
  value: {{ join "," $v.redis.clusterNodes | quote }}
{{- end }}
- name: QUOTA_MIGRATE_ON_START
  value: {{ not (include "quota-authority.migrateByJob" .) | quote }}
{{- if and (include "quota-authority.hasPlans" .) (not (include "quota-authority.plansByHook" .)) }}
- name: QUOTA_PLANS_FILE
  value: /etc/quota-authority/plans/{{ $v.plans.key }}
{{- end }}
{{- if $v.tls.enabled }}
- name: QUOTA_TLS_KEY_FILE
  value: /etc/quota-authority/tls/tls.key
- name: QUOTA_TLS_CERT_FILE
  value: /etc/quota-authority/tls/tls.crt
{{- if $v.tls.clientAuth }}
- name: QUOTA_TLS_CLIENT_CA_FILE
  value: /etc/quota-authority/tls/ca.crt
{{- end }}
{{- end }}
{{- include "quota-authority.secretEnv" (dict "ctx" . "secretName" (include "quota-authority.fullname" .)) }}
{{- with $v.redis.host }}
{{- /* $(REDIS_PASSWORD) is expanded by the kubelet from the variable defined above. */}}
- name: REDIS_URL
  value: {{ printf "%s://%s%s:%d/%d" (ternary "rediss" "redis" $v.redis.tls) (ternary ":$(REDIS_PASSWORD)@" "" (not (empty (include "quota-authority.has" (dict "ctx" $ "name" "REDIS_PASSWORD"))))) . (int $v.redis.port) (int $v.redis.database) | quote }}
{{- end }}
{{- with $v.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "quota-authority.volumeMounts" -}}
- name: quota-authority-tmp
  mountPath: /tmp
- name: quota-authority-data
  mountPath: {{ .Values.database.dataDir }}
{{- if include "quota-authority.hasPlans" . }}
- name: quota-authority-plans
  mountPath: /etc/quota-authority/plans
  readOnly: true
{{- end }}
{{- if .Values.tls.enabled }}
- name: quota-authority-tls
  mountPath: /etc/quota-authority/tls
  readOnly: true
{{- end }}
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Pod volumes the server needs; an application chart lists them next to its own when it uses the sidecar. */}}
{{- define "quota-authority.volumes" -}}
- name: quota-authority-tmp
  emptyDir:
    sizeLimit: 64Mi
- name: quota-authority-data
  emptyDir:
    sizeLimit: 1Gi
{{- if include "quota-authority.hasPlans" . }}
- name: quota-authority-plans
  configMap:
    name: {{ include "quota-authority.plansConfigMap" . }}
{{- end }}
{{- if .Values.tls.enabled }}
- name: quota-authority-tls
  secret:
    secretName: {{ .Values.tls.secretName }}
{{- end }}
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "quota-authority.ports" -}}
- name: grpc
  containerPort: {{ .Values.server.grpcPort }}
  protocol: TCP
- name: http
  containerPort: {{ .Values.server.httpPort }}
  protocol: TCP
{{- end -}}

{{/* TLS arguments of the health client: the chart's TLS Secret, whose certificate doubles as the client certificate
under mTLS (it needs the clientAuth extended key usage then). */}}
{{- define "quota-authority.healthTlsArgs" -}}
{{- if .Values.tls.enabled -}}
, "--tls", "--ca", "/etc/quota-authority/tls/{{ ternary "ca.crt" "tls.crt" .Values.tls.clientAuth }}"
{{- if .Values.tls.clientAuth -}}, "--cert", "/etc/quota-authority/tls/tls.crt", "--key", "/etc/quota-authority/tls/tls.key"{{- end -}}
{{- end -}}
{{- end -}}

{{/* One probe. Shared: native gRPC (HTTPS /readyz or /healthz under TLS). Sidecar: exec of grpc.health.v1/Check
on loopback, which kubelet (probing the pod IP) cannot reach. */}}
{{- define "quota-authority.probe" -}}
{{- $v := .ctx.Values -}}
{{- $p := index $v.probes .kind -}}
{{- if eq $v.mode "sidecar" }}
exec:
  command: ["node", "/app/src/cli/health.ts", "--address", "127.0.0.1:{{ $v.server.grpcPort }}", "--service", {{ $p.service | quote }}{{ include "quota-authority.healthTlsArgs" .ctx }}]
{{- else if $v.tls.enabled }}
httpGet:
  path: {{ ternary "/healthz" "/readyz" (eq .kind "liveness") }}
  port: http
  scheme: HTTPS
{{- else }}
grpc:
  port: {{ $v.server.grpcPort }}
  service: {{ $p.service | quote }}
{{- end }}
periodSeconds: {{ $p.periodSeconds }}
failureThreshold: {{ $p.failureThreshold }}
timeoutSeconds: {{ $p.timeoutSeconds }}
{{- end -}}

{{/* The server container, for the Deployment and the sidecar alike. */}}
{{- define "quota-authority.containerSpec" -}}
image: {{ include "quota-authority.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
args: ["serve"]
ports:
  {{- include "quota-authority.ports" . | nindent 2 }}
env:
  {{- include "quota-authority.env" . | nindent 2 }}
{{- with .Values.extraEnvFrom }}
envFrom:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumeMounts:
  {{- include "quota-authority.volumeMounts" . | nindent 2 }}
{{- range $kind := list "startup" "readiness" "liveness" }}
{{- if (index $.Values.probes $kind).enabled }}
{{ $kind }}Probe:
  {{- include "quota-authority.probe" (dict "ctx" $ "kind" $kind) | trim | nindent 2 }}
{{- end }}
{{- end }}
{{- if .Values.shutdown.preStopSleepSeconds }}
lifecycle:
  preStop:
    exec:
      command: ["sleep", "{{ .Values.shutdown.preStopSleepSeconds }}"]
{{- end }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
resources:
  {{- toYaml .Values.resources | nindent 2 }}
{{- end -}}

{{/*
The sidecar container, for an application chart's pod:

  initContainers:
    {{- include "quota-authority.sidecar" (index .Subcharts "quota-authority") | nindent 4 }}
  volumes:
    {{- include "quota-authority.volumes" (index .Subcharts "quota-authority") | nindent 4 }}

With sidecar.native=true (default) it belongs under initContainers (restartPolicy: Always: a native sidecar, up
before the app starts and stopped after it); with false, under containers. It binds 127.0.0.1.
*/}}
{{- define "quota-authority.sidecar" -}}
{{- if ne .Values.mode "sidecar" -}}
{{- fail "quota-authority.sidecar: set mode: sidecar in the quota-authority values" -}}
{{- end -}}
- name: {{ .Values.sidecar.name }}
  {{- if .Values.sidecar.native }}
  restartPolicy: Always
  {{- end }}
  {{- include "quota-authority.containerSpec" . | nindent 2 }}
{{- end -}}

{{- define "quota-authority.terminationGracePeriodSeconds" -}}
{{- $s := .Values.shutdown -}}
{{- if $s.terminationGracePeriodSeconds -}}
{{- $s.terminationGracePeriodSeconds -}}
{{- else -}}
{{- add $s.preStopSleepSeconds (div (add $s.graceMs 999) 1000) 5 -}}
{{- end -}}
{{- end -}}

{{/* Pod spec of a hook Job: one quota-authority command, DATABASE_URL from `secretName`. */}}
{{- define "quota-authority.jobPod" -}}
{{- $ctx := .ctx -}}
{{- $v := $ctx.Values -}}
metadata:
  labels:
    {{- include "quota-authority.selectorLabels" $ctx | nindent 4 }}
    app.kubernetes.io/component: {{ .component }}
spec:
  restartPolicy: Never
  {{- /* A pre-install hook runs before the chart's ServiceAccount exists: use the namespace default unless an
  existing ServiceAccount is named. */}}
  {{- if not $v.serviceAccount.create }}
  serviceAccountName: {{ include "quota-authority.serviceAccountName" $ctx }}
  {{- end }}
  automountServiceAccountToken: false
  {{- with $v.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  securityContext:
    {{- toYaml $v.podSecurityContext | nindent 4 }}
  containers:
    - name: {{ .component }}
      image: {{ include "quota-authority.image" $ctx }}
      imagePullPolicy: {{ $v.image.pullPolicy }}
      args: {{ toJson .args }}
      env:
        - name: QUOTA_LOG_LEVEL
          value: {{ $v.server.logLevel | quote }}
        {{- include "quota-authority.secretEnv" (dict "ctx" $ctx "secretName" .secretName "only" (list "DATABASE_URL")) | trim | nindent 8 }}
      volumeMounts:
        - name: quota-authority-tmp
          mountPath: /tmp
        {{- if .plans }}
        - name: quota-authority-plans
          mountPath: /etc/quota-authority/plans
          readOnly: true
        {{- end }}
      securityContext:
        {{- toYaml $v.securityContext | nindent 8 }}
      resources:
        {{- toYaml $v.migrations.resources | nindent 8 }}
  volumes:
    - name: quota-authority-tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if .plans }}
    - name: quota-authority-plans
      configMap:
        name: {{ include "quota-authority.plansConfigMap" $ctx }}
    {{- end }}
{{- end -}}
