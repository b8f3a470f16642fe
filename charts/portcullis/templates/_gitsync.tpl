{{/* The git-sync container (v4), as the one-time init container or the sidecar. */}}
{{- define "portcullis.gitSyncContainer" -}}
{{- $v := .root.Values.gitSync -}}
image: "{{ $v.image.repository }}:{{ $v.image.tag }}"
imagePullPolicy: {{ $v.image.pullPolicy }}
env:
  - name: GITSYNC_REPO
    value: {{ required "gitSync.repo is required when gitSync.enabled" $v.repo | quote }}
  - name: GITSYNC_REF
    value: {{ $v.ref | quote }}
  - name: GITSYNC_ROOT
    value: /policies
  - name: GITSYNC_LINK
    value: current
  - name: GITSYNC_DEPTH
    value: {{ $v.depth | quote }}
  - name: GITSYNC_PERIOD
    value: "{{ $v.period }}s"
  - name: GITSYNC_ONE_TIME
    value: {{ .oneTime | quote }}
  {{- if eq $v.auth.method "ssh" }}
  - name: GITSYNC_SSH_KEY_FILE
    value: /etc/git-secret/{{ $v.auth.sshKeyKey }}
  - name: GITSYNC_SSH_KNOWN_HOSTS
    value: "true"
  - name: GITSYNC_SSH_KNOWN_HOSTS_FILE
    value: /etc/git-secret/{{ $v.auth.knownHostsKey }}
  {{- else if eq $v.auth.method "token" }}
  - name: GITSYNC_USERNAME
    valueFrom:
      secretKeyRef:
        name: {{ $v.auth.existingSecret }}
        key: {{ $v.auth.usernameKey }}
  - name: GITSYNC_PASSWORD_FILE
    value: /etc/git-secret/{{ $v.auth.tokenKey }}
  {{- end }}
resources:
  {{- toYaml $v.resources | nindent 2 }}
securityContext:
  {{- include "portcullis.containerSecurity" . | nindent 2 }}
volumeMounts:
  - name: policies
    mountPath: /policies
  - name: tmp
    mountPath: /tmp
  {{- if ne $v.auth.method "none" }}
  - name: git-secret
    mountPath: /etc/git-secret
    readOnly: true
  {{- end }}
{{- end }}
