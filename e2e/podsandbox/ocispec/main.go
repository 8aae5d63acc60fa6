// Command podsandbox-spec writes the OCI runtime config that kubelet and
// containerd's CRI plugin would give the runner pod's container (see
// src/sandbox/pod.rs), so that runc can run it on a machine with no
// Kubernetes node. Everything security-relevant comes from the libraries
// those components use, not from copies:
//
//   - the base spec: containerd's pkg/oci default Unix spec (mounts,
//     namespaces, masked and read-only paths), changed the way
//     internal/cri/server/container_create.go (buildLinuxSpec) changes it;
//   - the /proc masks: kubelet's k8s.io/kubernetes/pkg/securitycontext
//     ConvertToRuntimeMaskedPaths / ConvertToRuntimeReadonlyPaths, which is
//     what kubelet sends over CRI for procMount Default or Unmasked;
//   - seccomp RuntimeDefault: containerd's contrib/seccomp DefaultProfile,
//     evaluated on the final spec (no capabilities), as the CRI plugin does;
//   - Pod Security admission: k8s.io/pod-security-admission's own checks.
//
// Subcommands:
//
//	spec -variant NAME [-bundle-id ID] [-uid N] [-userns-base N] [-cwd DIR]
//	     [-env K=V]... [-mount bind:SRC:DST:ro|rw]... -- ARGS...
//	seccomp-default        containerd's RuntimeDefault profile (OCI JSON)
//	seccomp-localhost      that profile plus what bubblewrap needs
//	admit -variant NAME    Pod Security "restricted" verdict on the pod
//	variants               the variant names, one a line
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"strings"

	"github.com/containerd/containerd/v2/contrib/seccomp"
	"github.com/containerd/containerd/v2/core/containers"
	"github.com/containerd/containerd/v2/pkg/namespaces"
	"github.com/containerd/containerd/v2/pkg/oci"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/securitycontext"
	psaapi "k8s.io/pod-security-admission/api"
	"k8s.io/pod-security-admission/policy"
)

// Variant is one pod-spec configuration: each field is a pod spec field.
type Variant struct {
	Name string
	// HostUsers false: spec.hostUsers=false (a user-namespaced pod).
	HostUsers bool
	// ProcMount: securityContext.procMount (Default or Unmasked).
	ProcMount corev1.ProcMountType
	// Seccomp: securityContext.seccompProfile.type.
	Seccomp corev1.SeccompProfileType
	Note    string
}

// LocalhostProfile is the name the Localhost profile would have under the
// kubelet's seccomp directory (/var/lib/kubelet/seccomp/).
const LocalhostProfile = "profiles/claude-runner-bwrap.json"

var variants = []Variant{
	{"runtime-default", true, corev1.DefaultProcMount, corev1.SeccompProfileTypeRuntimeDefault, "the pod as built today"},
	{"userns", false, corev1.DefaultProcMount, corev1.SeccompProfileTypeRuntimeDefault, "hostUsers: false"},
	{"userns-unmasked", false, corev1.UnmaskedProcMount, corev1.SeccompProfileTypeRuntimeDefault, "hostUsers: false, procMount: Unmasked"},
	{"localhost", true, corev1.DefaultProcMount, corev1.SeccompProfileTypeLocalhost, "seccomp Localhost = RuntimeDefault + bwrap's syscalls"},
	{"localhost-userns", false, corev1.DefaultProcMount, corev1.SeccompProfileTypeLocalhost, "Localhost seccomp, hostUsers: false"},
	{"localhost-userns-unmasked", false, corev1.UnmaskedProcMount, corev1.SeccompProfileTypeLocalhost, "Localhost seccomp, hostUsers: false, procMount: Unmasked"},
	{"unconfined", true, corev1.DefaultProcMount, corev1.SeccompProfileTypeUnconfined, "seccomp Unconfined"},
	{"unconfined-userns-unmasked", false, corev1.UnmaskedProcMount, corev1.SeccompProfileTypeUnconfined, "seccomp Unconfined, hostUsers: false, procMount: Unmasked"},
}

func variantNamed(name string) Variant {
	for _, v := range variants {
		if v.Name == name {
			return v
		}
	}
	fail("unknown variant %q", name)
	return Variant{}
}

func fail(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "podsandbox-spec: "+format+"\n", args...)
	os.Exit(2)
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

func main() {
	if len(os.Args) < 2 {
		fail("usage: podsandbox-spec spec|seccomp-default|seccomp-localhost|admit|variants ...")
	}
	switch os.Args[1] {
	case "spec":
		specCmd(os.Args[2:])
	case "seccomp-default":
		printJSON(seccomp.DefaultProfile(noCapsSpec()))
	case "seccomp-localhost":
		printJSON(localhostProfile())
	case "admit":
		admitCmd(os.Args[2:])
	case "variants":
		for _, v := range variants {
			fmt.Printf("%s\t%s\n", v.Name, v.Note)
		}
	default:
		fail("unknown subcommand %q", os.Args[1])
	}
}

func printJSON(v any) {
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fail("%v", err)
	}
}

// noCapsSpec is a spec whose process has no capabilities, which is what
// DefaultProfile looks at (capabilities: drop: [ALL]).
func noCapsSpec() *specs.Spec {
	return &specs.Spec{Process: &specs.Process{Capabilities: &specs.LinuxCapabilities{}}}
}

// BwrapSyscalls are what bubblewrap (as Claude Code runs it) calls that
// RuntimeDefault refuses a process without CAP_SYS_ADMIN: it creates user,
// mount, pid, net, ipc, uts and cgroup namespaces (clone/unshare with
// CLONE_NEW* flags, which the default profile's clone rule masks out), and
// builds the sandbox's root with mount, pivot_root and umount2.
var BwrapSyscalls = []string{"clone", "unshare", "mount", "umount2", "pivot_root"}

// localhostProfile is RuntimeDefault plus one rule allowing BwrapSyscalls
// unconditionally. clone3 keeps RuntimeDefault's ENOSYS (so the C library
// falls back to clone, whose flags seccomp can see).
func localhostProfile() *specs.LinuxSeccomp {
	p := seccomp.DefaultProfile(noCapsSpec())
	p.Syscalls = append(p.Syscalls, specs.LinuxSyscall{
		Names:  BwrapSyscalls,
		Action: specs.ActAllow,
	})
	return p
}

// withoutDefaultSecuritySettings is containerd's
// internal/cri/opts.WithoutDefaultSecuritySettings (internal, so not
// importable): no default seccomp or AppArmor profile, no rlimits.
func withoutDefaultSecuritySettings(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
	s.Process.ApparmorProfile = ""
	if s.Linux != nil {
		s.Linux.Seccomp = nil
	}
	s.Process.Rlimits = nil
	return nil
}

func specCmd(args []string) {
	fs := flag.NewFlagSet("spec", flag.ExitOnError)
	variantName := fs.String("variant", "runtime-default", "variant name (see `variants`)")
	id := fs.String("bundle-id", "runner", "container id (names its cgroup)")
	uid := fs.Uint("uid", 10001, "runAsUser = runAsGroup = fsGroup")
	usernsBase := fs.Uint("userns-base", 65536*8, "first host id of the pod's user namespace (hostUsers: false)")
	cwd := fs.String("cwd", "/workspace", "workingDir")
	hostname := fs.String("hostname", "runner-pod", "the pod's hostname")
	var env, mounts multi
	fs.Var(&env, "env", "K=V, repeatable")
	fs.Var(&mounts, "mount", "bind:SRC:DST:ro|rw, repeatable (volumes and the rootfs parts)")
	_ = fs.Parse(args)
	argv := fs.Args()
	if len(argv) == 0 {
		fail("spec: no command after --")
	}
	v := variantNamed(*variantName)

	var volumeMounts []specs.Mount
	for _, m := range mounts {
		parts := strings.Split(m, ":")
		if len(parts) != 4 || parts[0] != "bind" || (parts[3] != "ro" && parts[3] != "rw") {
			fail("bad -mount %q", m)
		}
		// As the CRI plugin mounts a volume (WithMounts): rbind, rprivate, ro|rw.
		volumeMounts = append(volumeMounts, specs.Mount{
			Destination: parts[2], Type: "bind", Source: parts[1],
			Options: []string{"rbind", "rprivate", parts[3]},
		})
	}

	procMount := v.ProcMount
	id32 := uint32(*uid)
	opts := []oci.SpecOpts{
		// buildLinuxSpec, in its order.
		oci.WithoutRunMount,
		withoutDefaultSecuritySettings,
		oci.WithRootFSPath("rootfs"),
		oci.WithProcessArgs(argv...),
		oci.WithDefaultPathEnv,
		oci.WithNewPrivileges,
		oci.WithProcessCwd(*cwd),
		oci.WithEnv([]string{"HOSTNAME=" + *hostname}),
		oci.WithEnv(env),
		oci.WithMounts(volumeMounts),
		oci.WithMaskedPaths([]string{}),
		oci.WithReadonlyPaths([]string{}),
		// What kubelet sends (kuberuntime: determineEffectiveSecurityContext).
		oci.WithMaskedPaths(securitycontext.ConvertToRuntimeMaskedPaths(&procMount)),
		oci.WithReadonlyPaths(securitycontext.ConvertToRuntimeReadonlyPaths(&procMount)),
		// capabilities.drop: [ALL] -> WithCapabilities(nil) in the CRI plugin.
		oci.WithCapabilities(nil),
		oci.WithAmbientCapabilities(nil),
		// allowPrivilegeEscalation: false.
		oci.WithNoNewPrivileges,
		// readOnlyRootFilesystem: true.
		oci.WithRootFSReadonly(),
		// runAsUser/runAsGroup, fsGroup as a supplementary group.
		oci.WithUIDGID(id32, id32),
		func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
			s.Process.User.AdditionalGids = []uint32{id32}
			s.Hostname = *hostname
			s.Linux.CgroupsPath = "/claude-operator-podsandbox/" + *id
			return nil
		},
		// The pod's namespaces: pid, ipc, uts and mount of its own; the
		// network namespace is the host's here (loopback test servers),
		// where a pod would have one of its own.
		oci.WithHostNamespace(specs.NetworkNamespace),
	}
	if !v.HostUsers {
		base := uint32(*usernsBase)
		// kubelet's user namespace manager gives each pod 65536 ids.
		mapping := []specs.LinuxIDMapping{{ContainerID: 0, HostID: base, Size: 65536}}
		opts = append(opts,
			oci.WithLinuxNamespace(specs.LinuxNamespace{Type: specs.UserNamespace}),
			oci.WithUserNamespace(mapping, mapping),
			// With the host's network and a user namespace the CRI plugin
			// bind-mounts /sys (mounting sysfs fails with EPERM).
			oci.WithoutMounts("/sys"),
			oci.WithMounts([]specs.Mount{{
				Source: "/sys", Destination: "/sys", Type: "bind",
				Options: []string{"rbind", "rro", "nosuid", "nodev", "noexec"},
			}}),
		)
	}
	// Last, as in containerSpecOpts: the seccomp profile sees the final
	// capabilities.
	switch v.Seccomp {
	case corev1.SeccompProfileTypeRuntimeDefault:
		opts = append(opts, seccomp.WithDefaultProfile())
	case corev1.SeccompProfileTypeLocalhost:
		opts = append(opts, func(_ context.Context, _ oci.Client, _ *containers.Container, s *specs.Spec) error {
			s.Linux.Seccomp = localhostProfile()
			return nil
		})
	case corev1.SeccompProfileTypeUnconfined:
	}

	ctx := namespaces.WithNamespace(context.Background(), "k8s.io")
	s, err := oci.GenerateSpec(ctx, nil, &containers.Container{ID: *id}, opts...)
	if err != nil {
		fail("generate spec: %v", err)
	}
	printJSON(s)
}

// runnerPod is the security-relevant part of src/sandbox/pod.rs's pod,
// changed as the variant says.
func runnerPod(v Variant) (*metav1.ObjectMeta, *corev1.PodSpec) {
	uid := int64(10001)
	f, t := false, true
	profile := &corev1.SeccompProfile{Type: v.Seccomp}
	if v.Seccomp == corev1.SeccompProfileTypeLocalhost {
		name := LocalhostProfile
		profile.LocalhostProfile = &name
	}
	var procMount *corev1.ProcMountType
	if v.ProcMount != corev1.DefaultProcMount {
		pm := v.ProcMount
		procMount = &pm
	}
	var hostUsers *bool
	if !v.HostUsers {
		hostUsers = &f
	}
	mode := int32(0o400)
	spec := &corev1.PodSpec{
		RestartPolicy:                corev1.RestartPolicyNever,
		AutomountServiceAccountToken: &f,
		EnableServiceLinks:           &f,
		HostUsers:                    hostUsers,
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot: &t, RunAsUser: &uid, RunAsGroup: &uid, FSGroup: &uid,
			SeccompProfile: profile,
		},
		Containers: []corev1.Container{{
			Name:    "runner",
			Image:   "runner",
			Command: []string{"claude-operator", "runner"},
			SecurityContext: &corev1.SecurityContext{
				AllowPrivilegeEscalation: &f,
				Privileged:               &f,
				Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				ReadOnlyRootFilesystem:   &t,
				RunAsNonRoot:             &t,
				RunAsUser:                &uid,
				RunAsGroup:               &uid,
				SeccompProfile:           profile,
				ProcMount:                procMount,
			},
		}},
		Volumes: []corev1.Volume{
			{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "home", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: "secrets", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "s", DefaultMode: &mode}}},
		},
	}
	return &metav1.ObjectMeta{Name: "runner", Namespace: "default"}, spec
}

func admitCmd(args []string) {
	fs := flag.NewFlagSet("admit", flag.ExitOnError)
	variantName := fs.String("variant", "runtime-default", "variant name")
	version := fs.String("version", "v1.37", "Pod Security policy version")
	_ = fs.Parse(args)
	v := variantNamed(*variantName)
	ver, err := psaapi.ParseVersion(*version)
	if err != nil {
		fail("%v", err)
	}
	evaluator, err := policy.NewEvaluator(policy.DefaultChecks(), nil)
	if err != nil {
		fail("%v", err)
	}
	meta, spec := runnerPod(v)
	for _, level := range []psaapi.Level{psaapi.LevelRestricted, psaapi.LevelBaseline} {
		result := policy.AggregateCheckResults(evaluator.EvaluatePod(psaapi.LevelVersion{Level: level, Version: ver}, meta, spec))
		if result.Allowed {
			fmt.Printf("%s %s: allowed\n", level, *version)
		} else {
			fmt.Printf("%s %s: forbidden: %s\n", level, *version, result.ForbiddenDetail())
		}
	}
}
