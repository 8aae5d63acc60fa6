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

{{/* The base of the components' ServiceAccount names. */}}
{{- define "claude-operator.serviceAccountBase" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "claude-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* A component's ServiceAccount: (dict "root" $ "component" "receiver"). */}}
{{- define "claude-operator.serviceAccountName" -}}
{{- printf "%s-%s" (include "claude-operator.serviceAccountBase" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* A component's username as the apiserver sees it (same dict). */}}
{{- define "claude-operator.username" -}}
{{- printf "system:serviceaccount:%s:%s" .root.Release.Namespace (include "claude-operator.serviceAccountName" .) }}
{{- end }}

{{/* A component's object name (same dict). */}}
{{- define "claude-operator.componentName" -}}
{{- printf "%s-%s" (include "claude-operator.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "claude-operator.componentSelectorLabels" -}}
{{ include "claude-operator.selectorLabels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "claude-operator.componentLabels" -}}
{{ include "claude-operator.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "claude-operator.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Leader election: the controller's, when on or with several replicas. */}}
{{- define "claude-operator.leaderElection" -}}
{{- if or .Values.leaderElection.enabled (gt (int .Values.replicaCount) 1) }}true{{ end }}
{{- end }}

{{- define "claude-operator.leaseNamespace" -}}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}

{{/*
The namespaces watched (watchNamespace: one name, or a list), as a JSON
list; empty: all namespaces.
*/}}
{{- define "claude-operator.watchNamespaces" -}}
{{- $w := .Values.watchNamespace -}}
{{- if kindIs "string" $w -}}
{{- if $w }}{{ list $w | toJson }}{{ else }}[]{{ end -}}
{{- else -}}
{{- $w | default list | uniq | toJson -}}
{{- end -}}
{{- end }}

{{/*
The receiver's rules on namespaced objects (ClusterRole, or a Role in each
watched namespace). Every verb is one the code calls; no Secrets.
*/}}
{{- define "claude-operator.receiverRules" -}}
# ClaudeRuns: created for a verified trigger (create); a pull request's runs
# are listed to record an approval comment (list) as an annotation (patch).
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderuns"]
  verbs: ["list", "create", "patch"]
# ClaudeRunPolicies: deliveries are matched against an informer cache of
# them (list, watch).
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderunpolicies"]
  verbs: ["list", "watch"]
{{- end }}

{{/*
The controller's rules on namespaced objects (ClusterRole, or a Role in each
watched namespace). Every verb is one the code calls; README.md lists them.
*/}}
{{- define "claude-operator.controllerRules" -}}
# ClaudeRuns: watched (list, watch), read fresh before a run is charged to
# the ledger (get), finalizer and approval annotation removed (patch),
# deleted after their retention (delete).
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderuns"]
  verbs: ["get", "list", "watch", "patch", "delete"]
# ClaudeRun status: phase, admission decision, cost (merge patch). Only the
# controller may write it (the status-writes admission policy).
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderuns/status"]
  verbs: ["patch"]
# Children (Pod, Secret, NetworkPolicy) carry a controller ownerReference with
# blockOwnerDeletion, which the OwnerReferencesPermissionEnforcement admission
# plugin (where enabled) allows only to who may update the owner's finalizers.
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderuns/finalizers"]
  verbs: ["update"]
# ClaudeRunPolicies: reconciled from an informer cache (list, watch); read
# fresh for the spend ledger at admission and charging (get); the
# keep-spend finalizer added and removed (patch).
- apiGroups: ["claude-operator.dev"]
  resources: ["clauderunpolicies"]
  verbs: ["get", "list", "watch", "patch"]
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
# Secrets in run namespaces: the run's Secret is created, watched as a child
# and deleted when the run ends; the policy's Anthropic key Secret is read
# (get). RBAC cannot narrow list/watch to the operator's label: set
# watchNamespace to keep this to the run namespaces.
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
# The run's egress fence, kept by server-side apply and watched as a child;
# read by name (get) to check that the run owns it before relying on it.
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "list", "watch", "create", "patch"]
# Events on runs (admitted, denied, sandbox created, finished): the recorder
# creates an Event and patches it when the same one repeats.
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end }}

{{/* The tenancy file's content (templates/tenancy.yaml). */}}
{{- define "claude-operator.tenancy" -}}
{{- toYaml (dict "namespaces" .Values.tenancy.namespaces "default" .Values.tenancy.default) }}
{{- end }}

{{/*
Token permissions that no namespace gets without the cluster admin naming
them in a tenancy grant (src/tenancy.rs, PERMISSIONS with no default
ceiling; tests/e2e_helm.rs keeps the two lists equal), less those some
grant of tenancy.namespaces or tenancy.default names: a JSON list.
*/}}
{{- define "claude-operator.refusedPermissions" -}}
{{- $granted := list -}}
{{- if .Values.tenancy.enabled -}}
{{- $grants := .Values.tenancy.namespaces | default list -}}
{{- with .Values.tenancy.default }}{{ $grants = append $grants . }}{{ end -}}
{{- range $grants }}{{ range $name, $_ := (.permissions | default dict) }}{{ $granted = append $granted $name }}{{ end }}{{ end -}}
{{- end -}}
{{- $refused := list -}}
{{- range list "workflows" "administration" "secrets" "dependabot_secrets" "secret_scanning_alerts" "environments" "repository_hooks" "single_file" "codespaces" "members" "team_discussions" "organization_administration" "organization_hooks" "organization_packages" "organization_plan" "organization_projects" "organization_secrets" "organization_self_hosted_runners" "organization_user_blocking" -}}
{{- if not (has . $granted) }}{{ $refused = append $refused . }}{{ end -}}
{{- end -}}
{{- $refused | toJson -}}
{{- end }}
