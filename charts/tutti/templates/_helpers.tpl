{{/* Names every object derives from. */}}
{{- define "tutti.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tutti.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: tutti
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* Selector labels of one component: (dict "ctx" $ "name" "tutti-gateway"). */}}
{{- define "tutti.selector" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- end -}}

{{- define "tutti.image" -}}
{{- $image := index .ctx.Values.images .name -}}
{{- printf "%s:%s" $image.repository (default .ctx.Chart.AppVersion $image.tag) -}}
{{- end -}}

{{- define "tutti.secretName" -}}
{{- default (printf "%s-tokens" (include "tutti.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{/* The live state's URL, as every binary's --store takes it. */}}
{{- define "tutti.store" -}}
{{- $scheme := ternary "etcds" "etcd" .Values.etcd.tls -}}
{{- if .Values.etcd.bundled -}}
{{- printf "etcds://%s-etcd:2379/%s" (include "tutti.fullname" .) .Values.etcd.prefix -}}
{{- else -}}
{{- if not .Values.etcd.endpoints -}}
{{- fail "etcd.endpoints must list your etcd when etcd.bundled is false" -}}
{{- end -}}
{{- printf "%s://%s/%s" $scheme (join "," .Values.etcd.endpoints) .Values.etcd.prefix -}}
{{- end -}}
{{- end -}}

{{/* The Secret (keys username, password) a component logs into etcd with, if any:
    its own with the bundled etcd, the one given for your etcd otherwise. */}}
{{- define "tutti.etcdSecret" -}}
{{- if and .ctx.Values.etcd.bundled .ctx.Values.etcd.auth.enabled -}}
{{- printf "%s-etcd-%s" (include "tutti.fullname" .ctx) .component -}}
{{- else -}}
{{- .ctx.Values.etcd.authSecret -}}
{{- end -}}
{{- end -}}

{{/* The Secret (key ca.crt) holding the CA etcd's certificate is checked against: the
    bundled etcd's own (it always speaks TLS), or etcd.caSecret for yours. */}}
{{- define "tutti.etcdCaSecret" -}}
{{- if .Values.etcd.bundled -}}
{{- printf "%s-etcd-tls" (include "tutti.fullname" .) -}}
{{- else if .Values.etcd.tls -}}
{{- .Values.etcd.caSecret -}}
{{- end -}}
{{- end -}}

{{/* Where components find that CA. */}}
{{- define "tutti.etcdCaPath" -}}/etc/tutti/etcd-ca/ca.crt{{- end -}}

{{/* etcd credentials of a component (dict "ctx" . "component" "gateway"). */}}
{{- define "tutti.etcdAuthEnv" -}}
{{- with include "tutti.etcdSecret" . }}
- name: TUTTI_ETCD_USER
  valueFrom: {secretKeyRef: {name: {{ . }}, key: username}}
- name: TUTTI_ETCD_PASSWORD
  valueFrom: {secretKeyRef: {name: {{ . }}, key: password}}
{{- end }}
{{- end -}}

{{- define "tutti.turnHost" -}}
{{- default .Values.coturn.externalIp .Values.coturn.host -}}
{{- end -}}

{{/* Pod security every Tutti container runs with (images run as uid 65532). */}}
{{- define "tutti.containerSecurity" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: [ALL]}
{{- end -}}

{{/* The env, volume mount and volume that give a container etcd's CA (if any). */}}
{{- define "tutti.etcdCaEnv" -}}
{{- if include "tutti.etcdCaSecret" . }}
- {name: TUTTI_ETCD_CA, value: {{ include "tutti.etcdCaPath" . }}}
{{- end }}
{{- end -}}
{{- define "tutti.etcdCaMount" -}}
{{- if include "tutti.etcdCaSecret" . }}
- {name: etcd-ca, mountPath: /etc/tutti/etcd-ca, readOnly: true}
{{- end }}
{{- end -}}
{{- define "tutti.etcdCaVolume" -}}
{{- with include "tutti.etcdCaSecret" . }}
- name: etcd-ca
  secret: {secretName: {{ . }}, items: [{key: ca.crt, path: ca.crt}]}
{{- end }}
{{- end -}}
