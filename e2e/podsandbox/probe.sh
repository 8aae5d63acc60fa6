#!/usr/bin/env bash
# Probes whether bubblewrap, as Claude Code's sandbox runs it, can work inside
# a container shaped like the runner pod (UID 10001, no capabilities,
# no_new_privs, read-only root, runc's default masked /proc paths), with and
# without a seccomp rule standing in for the runtimes' RuntimeDefault
# namespace restriction (unshare/setns/mount and clone(CLONE_NEWUSER) refused
# without CAP_SYS_ADMIN). Needs root and runc (apt-get install runc). Prints
# one line per probe: name=exit status of bwrap. Findings: docs/pod-sandbox.md.
set -euo pipefail
command -v runc >/dev/null || { echo "needs runc (apt-get install runc)" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || { echo "needs root" >&2; exit 2; }
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir -p "$dir/rootfs"/{usr,etc,tmp,proc,dev,sys}
for l in bin lib lib64 sbin; do ln -s "usr/$l" "$dir/rootfs/$l"; done
cd "$dir"
runc spec
probes='bwrap --ro-bind / / --dev /dev --unshare-user --unshare-pid --proc /proc true; echo claude-default=$?
bwrap --ro-bind / / --dev /dev --unshare-user --unshare-pid --bind /proc /proc true; echo weaker-nested=$?
bwrap --ro-bind / / --unshare-user true; echo userns-only=$?'
for variant in no-seccomp runtime-default-ns-rule; do
  VARIANT="$variant" PROBES="$probes" python3 - <<'PY'
import json, os
c = json.load(open("config.json"))
p = c["process"]
p.update(terminal=False, user={"uid": 10001, "gid": 10001}, noNewPrivileges=True,
         args=["/bin/sh", "-c", os.environ["PROBES"]])
p["capabilities"] = {k: [] for k in ["bounding", "effective", "permitted", "ambient", "inheritable"]}
c["root"] = {"path": "rootfs", "readonly": True}
c["mounts"] += [{"destination": "/" + d, "type": "bind", "source": "/" + d, "options": ["rbind", "ro"]} for d in ["usr", "etc"]]
c["mounts"].append({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]})
c["linux"]["namespaces"] = [n for n in c["linux"]["namespaces"] if n["type"] != "network"]
if os.environ["VARIANT"] != "no-seccomp":
    c["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"], "syscalls": [
        {"names": ["unshare", "setns", "mount"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1},
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": 38},
        {"names": ["clone"], "action": "SCMP_ACT_ERRNO", "errnoRet": 1,
         "args": [{"index": 0, "value": 0x10000000, "valueTwo": 0x10000000, "op": "SCMP_CMP_MASKED_EQ"}]}]}
json.dump(c, open("config.json", "w"))
PY
  echo "== $variant"
  timeout 60 runc run "probe-$$-$variant" 2>&1 | sed 's/^/  /'
done
