{{/* Names */}}
{{- define "routeid.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "routeid.fullname" -}}
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

{{- define "routeid.selectorLabels" -}}
app.kubernetes.io/name: {{ include "routeid.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "routeid.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "routeid.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: routeid
{{- end }}

{{- define "routeid.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "routeid.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "routeid.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "routeid.sidecar" -}}
{{- eq .Values.mode "sidecar" }}
{{- end }}

{{/* The namespace the controller watches ("" = all). Sidecar: the release namespace (the app's). */}}
{{- define "routeid.watchNamespace" -}}
{{- if eq .Values.mode "sidecar" }}
{{- .Release.Namespace }}
{{- else }}
{{- .Values.watchNamespace }}
{{- end }}
{{- end }}

{{- define "routeid.leaseNamespace" -}}
{{- if eq .Values.mode "sidecar" }}
{{- .Release.Namespace }}
{{- else }}
{{- default .Release.Namespace .Values.leaderElection.namespace }}
{{- end }}
{{- end }}

{{- define "routeid.ingressClass" -}}
{{- if .Values.ingressClass.name }}
{{- .Values.ingressClass.name }}
{{- else if eq .Values.mode "sidecar" }}
{{- "routeid-sidecar" }}
{{- else }}
{{- "routeid" }}
{{- end }}
{{- end }}

{{- define "routeid.defaultClass" -}}
{{- if kindIs "bool" .Values.ingressClass.default }}
{{- .Values.ingressClass.default }}
{{- else }}
{{- ne .Values.mode "sidecar" }}
{{- end }}
{{- end }}

{{/* The manager token Secret: name, and whether the pods may start without it. */}}
{{- define "routeid.managerSecretName" -}}
{{- default (printf "%s-manager" (include "routeid.fullname" .)) .Values.manager.existingSecret }}
{{- end }}

{{- define "routeid.managerSecretOptional" -}}
{{- and (not .Values.manager.existingSecret) (not .Values.manager.createSecret) }}
{{- end }}

{{- define "routeid.terminationGracePeriodSeconds" -}}
{{- $min := add .Values.shutdown.preStopSleepSeconds .Values.proxy.drainTimeoutSeconds }}
{{- $set := .Values.shutdown.terminationGracePeriodSeconds }}
{{- if kindIs "invalid" $set }}
{{- add $min 5 }}
{{- else if lt (int $set) (int $min) }}
{{- fail (printf "shutdown.terminationGracePeriodSeconds (%d) must be at least shutdown.preStopSleepSeconds + proxy.drainTimeoutSeconds (%d): Kubernetes kills the pod before in-flight requests have drained" (int $set) (int $min)) }}
{{- else }}
{{- $set }}
{{- end }}
{{- end }}

{{/* Checks that need more than one value (the schema checks each value alone). */}}
{{- define "routeid.validate" -}}
{{- if and (or .Values.proxyProtocol.http .Values.proxyProtocol.https) (empty .Values.trustedProxies) }}
{{- fail "proxyProtocol needs trustedProxies (the load balancer's addresses): without them every connection is refused" }}
{{- end }}
{{- if and (eq .Values.mode "ingress") (not .Values.leaderElection.enabled) (gt (int .Values.replicas) 1) }}
{{- fail (printf "leaderElection.enabled=false needs replicas: 1 (got %d): every replica would write BalancerPool status" (int .Values.replicas)) }}
{{- end }}
{{- if and (eq .Values.service.type "ClusterIP") .Values.service.externalTrafficPolicy }}
{{- fail "service.externalTrafficPolicy applies to service.type NodePort or LoadBalancer only" }}
{{- end }}
{{- if and (eq .Values.service.type "ClusterIP") (not (kindIs "invalid" .Values.service.nodePort)) }}
{{- fail "service.nodePort applies to service.type NodePort or LoadBalancer only" }}
{{- end }}
{{- if and .Values.manager.existingSecret .Values.manager.createSecret }}
{{- fail "manager.existingSecret and manager.createSecret: choose one" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both (set the other to null)" }}
{{- end }}
{{- if and (gt (int .Values.shutdown.preStopSleepSeconds) 0) (not (semverCompare ">=1.30.0-0" .Capabilities.KubeVersion.Version)) }}
{{- fail (printf "shutdown.preStopSleepSeconds needs Kubernetes >= 1.30 (lifecycle.preStop.sleep); this cluster is %s: set it to 0" .Capabilities.KubeVersion.Version) }}
{{- end }}
{{- end }}

{{/* The RBAC rules of the controller, for the namespaces it watches. */}}
{{- define "routeid.watchRules" -}}
- apiGroups: [routeid.io]               # the pools; patch: the balancer-manager's spec.members overrides
  resources: [balancerpools]
  verbs: [get, list, watch, patch]
- apiGroups: [routeid.io]               # status, written by the Lease holder (merge patch)
  resources: [balancerpools/status]
  verbs: [patch]
- apiGroups: [discovery.k8s.io]         # the members (never Pods)
  resources: [endpointslices]
  verbs: [get, list, watch]
- apiGroups: [""]                       # a backend port is the Service's port: port -> targetPort
  resources: [services]
  verbs: [get, list, watch]
- apiGroups: [events.k8s.io]            # MemberAdded / MemberRemoved / InvalidSpec on pools
  resources: [events]
  verbs: [create, patch]
{{- if and .Values.tls.enabled (ne .Values.mode "sidecar") }}
- apiGroups: [""]                       # TLS certificates: one watch per Secret a pool names (fieldSelector metadata.name)
  resources: [secrets]
  verbs: [get, list, watch]
{{- end }}
{{- end }}

{{/* Ingress mode: the Ingresses served, and their status (status.loadBalancer). */}}
{{- define "routeid.ingressRules" -}}
- apiGroups: [networking.k8s.io]        # Ingresses of routeid's IngressClass
  resources: [ingresses]
  verbs: [get, list, watch]
- apiGroups: [networking.k8s.io]        # status.loadBalancer, written by the Lease holder
  resources: [ingresses/status]
  verbs: [update, patch]
{{- end }}

{{/* IngressClasses are cluster-scoped: a ClusterRole even when one namespace is watched. */}}
{{- define "routeid.ingressClassRules" -}}
- apiGroups: [networking.k8s.io]        # which IngressClass is routeid's, and whether it is the default
  resources: [ingressclasses]
  verbs: [get, list, watch]
{{- end }}

{{/* The IngressClass is the cluster default only when ingressClass.default is explicitly true. */}}
{{- define "routeid.clusterDefaultIngressClass" -}}
{{- and (ne .Values.mode "sidecar") (kindIs "bool" .Values.ingressClass.default) .Values.ingressClass.default }}
{{- end }}

{{- define "routeid.leaseRules" -}}
- apiGroups: [coordination.k8s.io]      # leader election (kube-lease-manager): the Lease routeid-status
  resources: [leases]
  verbs: [get, list, watch, create, update, patch]
{{- end }}

{{/* The routeid container, for the Deployment (ingress) and the sidecar snippet. */}}
{{- define "routeid.container" -}}
{{- $sidecar := eq .Values.mode "sidecar" }}
{{- $adminPort := ternary .Values.sidecar.adminPort .Values.admin.port $sidecar }}
name: routeid
image: {{ include "routeid.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
{{- if $sidecar }}
restartPolicy: Always                   # a native sidecar: starts before, stops after the app
{{- end }}
args:
  - controller
  {{- if $sidecar }}
  - --namespace=$(POD_NAMESPACE)
  - --listen={{ .Values.sidecar.listen }}
  - --admin-listen=0.0.0.0:{{ .Values.sidecar.adminPort }}
  {{- else }}
  {{- with .Values.watchNamespace }}
  - --namespace={{ . }}
  {{- end }}
  - --listen=0.0.0.0:{{ .Values.proxy.port }}
  - --admin-listen=0.0.0.0:{{ .Values.admin.port }}
  {{- if .Values.tls.enabled }}
  - --tls-listen=0.0.0.0:{{ .Values.tls.port }}
  {{- with .Values.tls.handshakeTimeout }}
  {{- if ne . "10s" }}
  - --handshake-timeout={{ . }}
  {{- end }}
  {{- end }}
  {{- with .Values.defaultTlsSecret }}
  - --default-tls-secret={{ . }}
  {{- end }}
  {{- if .Values.proxyProtocol.https }}
  - --tls-proxy-protocol
  {{- end }}
  {{- end }}
  {{- if .Values.proxyProtocol.http }}
  - --proxy-protocol
  {{- end }}
  {{- end }}
  {{- with .Values.trustedProxies }}
  - --trusted-proxies={{ join "," . }}
  {{- end }}
  - --ingress-class={{ include "routeid.ingressClass" . }}
  - --default-class={{ include "routeid.defaultClass" . }}
  {{- if $sidecar }}
  - --watch-ingresses=false
  {{- else if eq (include "routeid.clusterDefaultIngressClass" .) "true" }}
  - --watch-ingress-without-class
  {{- end }}
  {{- if .Values.leaderElection.enabled }}
  - --lease-namespace={{ ternary "$(POD_NAMESPACE)" (include "routeid.leaseNamespace" .) $sidecar }}
  {{- else }}
  - --no-leader-election
  {{- end }}
  - --drain-timeout={{ .Values.proxy.drainTimeoutSeconds }}s
  - --client-header-timeout={{ .Values.proxy.clientHeaderTimeout }}
  - --client-idle-timeout={{ .Values.proxy.clientIdleTimeout }}
  {{- if .Values.proxy.via }}
  - --via
  {{- end }}
  {{- if not .Values.proxy.accessLog }}
  - --no-access-log
  {{- end }}
  - --log-format={{ .Values.logFormat }}
  {{- range .Values.extraArgs }}
  - {{ . | quote }}
  {{- end }}
env:
  - name: POD_NAME
    valueFrom: {fieldRef: {fieldPath: metadata.name}}
  - name: POD_NAMESPACE
    valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
  - name: RUST_LOG
    value: {{ .Values.logLevel | quote }}
  - name: ROUTEID_MANAGER_TOKEN
    valueFrom:
      secretKeyRef:
        name: {{ include "routeid.managerSecretName" . }}
        key: {{ .Values.manager.secretKey }}
        optional: {{ include "routeid.managerSecretOptional" . }}
  {{- with .Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
ports:
  {{- if not $sidecar }}
  - name: http
    containerPort: {{ .Values.proxy.port }}
    protocol: TCP
  {{- if .Values.tls.enabled }}
  - name: https
    containerPort: {{ .Values.tls.port }}
    protocol: TCP
  {{- end }}
  {{- end }}
  - name: {{ ternary "routeid-admin" "admin" $sidecar }}
    containerPort: {{ $adminPort }}
    protocol: TCP
{{- if $sidecar }}
startupProbe:                           # the app starts once routeid has its routing table
  httpGet: {path: /readyz, port: {{ $adminPort }}}
  periodSeconds: 1
  failureThreshold: 120
{{- end }}
livenessProbe:
  httpGet: {path: /healthz, port: {{ $adminPort }}}
  {{- toYaml .Values.livenessProbe | nindent 2 }}
readinessProbe:
  httpGet: {path: /readyz, port: {{ $adminPort }}}
  {{- toYaml .Values.readinessProbe | nindent 2 }}
{{- if and (not $sidecar) (gt (int .Values.shutdown.preStopSleepSeconds) 0) }}
lifecycle:
  preStop:
    sleep: {seconds: {{ .Values.shutdown.preStopSleepSeconds }}}
{{- end }}
resources:
  {{- toYaml (ternary .Values.sidecar.resources .Values.resources $sidecar) | nindent 2 }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end }}
