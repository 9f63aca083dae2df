{{/* Names and labels. */}}
{{- define "pgsidecar.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pgsidecar.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "pgsidecar.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pgsidecar.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels; `component` tells the example app's pods from the standalone tier's. */}}
{{- define "pgsidecar.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pgsidecar.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "pgsidecar.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The Secret holding pgsidecar.toml, and its key. */}}
{{- define "pgsidecar.configSecret" -}}
{{- default (printf "%s-config" (include "pgsidecar.fullname" .)) .Values.config.existingSecret -}}
{{- end -}}

{{- define "pgsidecar.configKey" -}}
{{- if .Values.config.existingSecret -}}{{ .Values.config.existingSecretKey }}{{- else -}}pgsidecar.toml{{- end -}}
{{- end -}}

{{/* Changes whenever the configuration does, so pods roll (an existing Secret: its name). */}}
{{- define "pgsidecar.configChecksum" -}}
{{- if .Values.config.existingSecret -}}
{{- printf "%s/%s" .Values.config.existingSecret .Values.config.existingSecretKey | sha256sum -}}
{{- else -}}
{{- .Values.config.toml | sha256sum -}}
{{- end -}}
{{- end -}}

{{- define "pgsidecar.terminationGracePeriodSeconds" -}}
{{- add .Values.shutdownDelaySeconds .Values.drainTimeoutSeconds .Values.terminationGraceMarginSeconds -}}
{{- end -}}

{{/*
The pgsidecar container, as one list item. Include it in a pod's `initContainers` (native
sidecar: pass native=true) or `containers`:

  initContainers:
    {{- include "pgsidecar.container" (dict "root" $ "native" true "listen" "127.0.0.1") | nindent 4 }}
  volumes:
    {{- include "pgsidecar.volumes" $ | nindent 4 }}

`listen` is the client address inside the pod: 127.0.0.1 beside an application (only the pod
reaches it), 0.0.0.0 for a standalone tier. Metrics and probes listen on all addresses.
*/}}
{{- define "pgsidecar.container" -}}
{{- $root := .root -}}
{{- $v := $root.Values -}}
- name: pgsidecar
  image: {{ include "pgsidecar.image" $root | quote }}
  imagePullPolicy: {{ $v.image.pullPolicy }}
  {{- if .native }}
  restartPolicy: Always
  {{- end }}
  args: ["run", "--config", "/etc/pgsidecar/pgsidecar.toml"]
  env:
    - name: PGSIDECAR_LISTEN
      value: {{ printf "%s:%v" .listen $v.ports.client | quote }}
    - name: PGSIDECAR_METRICS_LISTEN
      value: {{ printf "0.0.0.0:%v" $v.ports.metrics | quote }}
    - name: PGSIDECAR_SHUTDOWN_DELAY
      value: {{ printf "%vs" $v.shutdownDelaySeconds | quote }}
    - name: PGSIDECAR_DRAIN_TIMEOUT
      value: {{ printf "%vs" $v.drainTimeoutSeconds | quote }}
    {{- with $v.extraEnv }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  ports:
    - name: postgres
      containerPort: {{ $v.ports.client }}
      protocol: TCP
    - name: metrics
      containerPort: {{ $v.ports.metrics }}
      protocol: TCP
  startupProbe:
    httpGet:
      path: /readyz
      port: metrics
    periodSeconds: {{ $v.probes.startup.periodSeconds }}
    failureThreshold: {{ $v.probes.startup.failureThreshold }}
  readinessProbe:
    httpGet:
      path: /readyz
      port: metrics
    periodSeconds: {{ $v.probes.readiness.periodSeconds }}
    failureThreshold: {{ $v.probes.readiness.failureThreshold }}
  livenessProbe:
    httpGet:
      path: /healthz
      port: metrics
    periodSeconds: {{ $v.probes.liveness.periodSeconds }}
    failureThreshold: {{ $v.probes.liveness.failureThreshold }}
  resources:
    {{- toYaml $v.resources | nindent 4 }}
  securityContext:
    {{- toYaml $v.securityContext | nindent 4 }}
  volumeMounts:
    - name: pgsidecar-config
      mountPath: /etc/pgsidecar
      readOnly: true
{{- end -}}

{{/* The volume the container's configuration comes from, as one list item. */}}
{{- define "pgsidecar.volumes" -}}
- name: pgsidecar-config
  secret:
    secretName: {{ include "pgsidecar.configSecret" . }}
    items:
      - key: {{ include "pgsidecar.configKey" . }}
        path: pgsidecar.toml
{{- end -}}

{{/* The sidecar as this chart's values configure it (native or regular), for other charts. */}}
{{- define "pgsidecar.sidecar" -}}
{{- include "pgsidecar.container" (dict "root" . "native" .Values.nativeSidecar "listen" "127.0.0.1") -}}
{{- end -}}

{{/* Pod-level settings shared by both modes. */}}
{{- define "pgsidecar.podSettings" -}}
terminationGracePeriodSeconds: {{ include "pgsidecar.terminationGracePeriodSeconds" . }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
