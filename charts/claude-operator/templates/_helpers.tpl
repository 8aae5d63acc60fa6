{{/* Name of the chart, overridable. */}}
{{- define "claude-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: the release name when it contains the chart name. */}}
{{- define "claude-operator.fullname" -}}
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

{{/* Name of cluster-scoped objects: also names the namespace, so releases of
the same name in two namespaces do not collide. */}}
{{- define "claude-operator.clusterName" -}}
{{- printf "%s-%s" (include "claude-operator.fullname" .) .Release.Namespace }}
{{- end }}

{{- define "claude-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "claude-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "claude-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "claude-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "claude-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "claude-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator's username as the apiserver sees it. */}}
{{- define "claude-operator.username" -}}
{{- printf "system:serviceaccount:%s:%s" .Release.Namespace (include "claude-operator.serviceAccountName" .) }}
{{- end }}

{{- define "claude-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "claude-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "claude-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/*
The operator's rules on namespaced objects: the same list for the ClusterRole
(all namespaces) and the Role (watchNamespace). Every verb is one the code
calls; README.md lists them with the code that needs them.
*/}}
{{- define "claude-operator.rules" -}}
# ClaudeRuns: the receiver creates them (create) and lists a pull request's
# runs to record an approval (list, patch); the controller watches them
# (list, watch), adds and removes its finalizer (patch) and deletes a run
# after its retention (delete). It never reads one by name (get is not used).
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderuns"]
  verbs: ["list", "watch", "create", "patch", "delete"]
# ClaudeRun status: phase, admission decision, cost (merge patch).
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderuns/status"]
  verbs: ["patch"]
# Children (Pod, Secret, NetworkPolicy) carry a controller ownerReference with
# blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement admission
# plugin (where enabled) allows only to who may update the owner's finalizers.
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderuns/finalizers"]
  verbs: ["update"]
# ClaudeRunPolicies: the receiver matches deliveries against, and the
# controller reconciles, an informer cache of them (list, watch).
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderunpolicies"]
  verbs: ["list", "watch"]
# ClaudeRunPolicy status: readiness, spend, reserved and active runs.
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderunpolicies/status"]
  verbs: ["patch"]
# The ResourceQuota and LimitRange are owned by their policy (see above).
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderunpolicies/finalizers"]
  verbs: ["update"]
# Runner pods: created once per admitted run, followed through the run
# controller's watch and by name (get), deleted after their log retention.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch", "create", "delete"]
# Secrets: the run's Secret (minted GitHub token, Anthropic key, prompt) is
# created, watched and deleted when the run ends; the policy's Anthropic key
# Secret is read (get). Kubernetes RBAC cannot narrow list/watch to the
# operator's label, so set watchNamespace to keep this to one namespace.
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["get", "list", "watch", "create", "delete"]
# The runner's ServiceAccount (no token, no bindings), kept by server-side
# apply: an apply that creates the object is authorized as create and patch.
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create", "patch"]
# A policy's ResourceQuota and LimitRange, kept by server-side apply.
- apiGroups: [""]
  resources: ["resourcequotas", "limitranges"]
  verbs: ["create", "patch"]
# The run's egress fence, kept by server-side apply and watched as a child.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["list", "watch", "create", "patch"]
# Events on runs (admitted, denied, sandbox created, finished): the recorder
# creates an Event and patches it when the same one repeats.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}
