{{/* Names, labels and images, defined once. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "epnas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The resource name prefix: fullnameOverride, else "<release>-<chart>" (just the release name when it contains the chart name). */}}
{{- define "epnas.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "chart-version" for the helm.sh/chart label. */}}
{{- define "epnas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource. */}}
{{- define "epnas.labels" -}}
helm.sh/chart: {{ include "epnas.chart" . }}
{{ include "epnas.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: epnas
{{- end }}

{{/* Selector labels of the controller (immutable once installed). */}}
{{- define "epnas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "epnas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{/* The controller's ServiceAccount name. */}}
{{- define "epnas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "epnas.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The controller image: repository@digest, else repository:tag (tag defaults to appVersion). */}}
{{- define "epnas.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* The default trainer image: repository:tag (tag defaults to appVersion). */}}
{{- define "epnas.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) }}
{{- end }}

{{/* The watched namespace, rendered with tpl, as a JSON list of at most one ("[]" = all namespaces). */}}
{{- define "epnas.watchNamespaces" -}}
{{- $out := list }}
{{- range .Values.watchNamespaces }}
{{- $out = append $out (tpl . $) }}
{{- end }}
{{- $out = $out | uniq }}
{{- if gt (len $out) 1 }}
{{- fail (printf "watchNamespaces: the controller watches one namespace (--namespace) or all of them ([]), not %d: %s" (len $out) (join ", " $out)) }}
{{- end }}
{{- $out | toJson }}
{{- end }}

{{/* The controller's permissions, the same for a Role and a ClusterRole. No Secrets: trainer
Jobs name the store Secret and the kubelet resolves it. */}}
{{- define "epnas.rules" -}}
# Exactly what the controller's code uses (controller/rbac.py; checked by tests/integration/test_chart.py).
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: ["epnas.io"]
  resources: ["architecturesearches"]
  verbs: ["list", "watch"]
# Jobs' ownerReferences set blockOwnerDeletion: the OwnerReferencesPermissionEnforcement
# admission plugin allows that only to who may update the owner's finalizers.
- apiGroups: ["epnas.io"]
  resources: ["architecturesearches/finalizers"]
  verbs: ["update"]
- apiGroups: ["epnas.io"]
  resources: ["architecturesearches/status"]
  verbs: ["patch"]
{{- end }}

{{/* The installation's spec.trainer defaults as JSON (values trainer.*), for --trainer-defaults. */}}
{{- define "epnas.trainerDefaults" -}}
{{- $t := .Values.trainer -}}
{{- $out := dict "image" (include "epnas.trainerImage" .) "gpu" $t.gpu "cpu" (toString $t.cpu) "memory" (toString $t.memory) -}}
{{- with $t.nodeSelector }}{{ $_ := set $out "nodeSelector" . }}{{ end -}}
{{- with $t.tolerations }}{{ $_ := set $out "tolerations" . }}{{ end -}}
{{- with $t.affinity }}{{ $_ := set $out "affinity" . }}{{ end -}}
{{- with $t.priorityClassName }}{{ $_ := set $out "priorityClassName" . }}{{ end -}}
{{- with $t.imagePullSecrets }}{{ $_ := set $out "imagePullSecrets" . }}{{ end -}}
{{- with $t.serviceAccountName }}{{ $_ := set $out "serviceAccountName" . }}{{ end -}}
{{- with $t.queueName }}{{ $_ := set $out "queueName" . }}{{ end -}}
{{- toJson $out -}}
{{- end }}
