package deploy

import (
	"archive/tar"
	"bufio"
	"bytes"
	"crypto/x509"
	"debug/buildinfo"
	"debug/elf"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// The image's layout, as deploy/compose/Dockerfile's final stage writes it
// and deploy/README.md "The image" describes it.
const (
	imageUser     = "65532:65532"
	imageBinary   = "/usr/local/bin/watcher"
	imageStateDir = "/var/lib/rollback-watcher"
	imageRulesDir = "/etc/rollback-watcher/rules"
	imageCABundle = "/etc/ssl/certs/ca-certificates.crt"
)

// imageConfig is what `podman image inspect` says of the image.
type imageConfig struct {
	Size   int64
	Config struct {
		User         string
		WorkingDir   string
		Entrypoint   []string
		Cmd          []string
		ExposedPorts map[string]struct{}
	}
}

// imageFile is one entry of the image's filesystem.
type imageFile struct {
	hdr  *tar.Header
	data []byte
}

// output runs a command and returns its stdout, failing the test with its
// stderr if it fails.
func output(t *testing.T, name string, args ...string) []byte {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(name, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.Bytes())
	}
	return out
}

// TestImage builds the image exactly as `make image` does (podman, no
// image pulled) and runs it with its own ENTRYPOINT and CMD against a
// loopback Prometheus: the binary is static and stripped, the files have
// the owners and modes the final stage means, the CA bundle and the users
// are there, and uid 65532 runs the embedded NATS server with its state in
// the state directory and validates a deploy published from this machine.
func TestImage(t *testing.T) {
	podman := tool(t, "podman", "podman")
	// crun, podman's default runtime, cannot run containers on a machine
	// with cgroups v1 and a cgroup v2 hierarchy holding a controller
	// ("cgroups in hybrid mode not supported"); runc can, and runs them
	// anywhere else as well.
	tool(t, "runc", "runc")
	makeCmd := tool(t, "make", "make")
	host := watcherBinary(t)

	tag := fmt.Sprintf("localhost/rollback-watcher/watcher:image-test-%d", os.Getpid())
	buildContext := t.TempDir()
	start := time.Now()
	// --layers=false: no cached layer per step piles up in podman's store
	// at each run; the image itself is removed at the end.
	run(t, "..", makeCmd, "--no-print-directory", "image", "ENGINE=podman", "IMAGE="+tag,
		"IMAGE_CONTEXT="+buildContext, "IMAGEFLAGS=--layers=false --quiet")
	t.Cleanup(func() { _ = exec.Command(podman, "rmi", "--force", tag).Run() })
	t.Logf("make image: %s", time.Since(start).Round(time.Second))

	var inspected []imageConfig
	if err := json.Unmarshal(output(t, podman, "image", "inspect", tag), &inspected); err != nil || len(inspected) != 1 {
		t.Fatalf("podman image inspect %s: %v (%d images)", tag, err, len(inspected))
	}
	img := inspected[0]
	files := imageFiles(t, podman, tag)
	checkImageConfig(t, img, files)
	checkImageFiles(t, files)
	checkImageBinary(t, files[strings.TrimPrefix(imageBinary, "/")].data)

	var rootfs int64
	for _, f := range files {
		rootfs += f.hdr.Size
	}
	t.Logf("image %s: %d bytes (podman image inspect), %d bytes in %d files and directories", tag, img.Size, rootfs, len(files))

	runImage(t, podman, host, tag, img)
}

// imageFiles reads the image's filesystem from a container created from
// it (never started: nothing of a run is in it).
func imageFiles(t *testing.T, podman, tag string) map[string]imageFile {
	t.Helper()
	id := strings.TrimSpace(string(output(t, podman, "create", tag)))
	defer func() { _ = exec.Command(podman, "rm", "--force", id).Run() }()
	tr := tar.NewReader(bytes.NewReader(output(t, podman, "export", id)))
	files := map[string]imageFile{}
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return files
		}
		if err != nil {
			t.Fatalf("podman export %s: %v", id, err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimSuffix(path.Clean(hdr.Name), "/")] = imageFile{hdr: hdr, data: data}
	}
}

// checkImageConfig compares the image's configuration with what the
// Dockerfile means: the CMD it writes, a user that is not root, a working
// directory that is the state directory.
func checkImageConfig(t *testing.T, img imageConfig, files map[string]imageFile) {
	t.Helper()
	c := img.Config
	if c.User != imageUser {
		t.Errorf("image user %q, want %q (the Dockerfile's USER; Kubernetes' runAsUser is 65532)", c.User, imageUser)
	}
	if !slices.Equal(c.Entrypoint, []string{imageBinary}) {
		t.Errorf("image entrypoint %q, want [%s]", c.Entrypoint, imageBinary)
	}
	if want := dockerfileCmd(t); !slices.Equal(c.Cmd, want) {
		t.Errorf("image CMD %q, the Dockerfile's %q", c.Cmd, want)
	}
	if c.WorkingDir != imageStateDir || flagValue(c.Cmd, "storage.path") != imageStateDir {
		t.Errorf("working directory %q and CMD --storage.path=%q: both should be the state directory %s", c.WorkingDir, flagValue(c.Cmd, "storage.path"), imageStateDir)
	}
	if _, port, err := net.SplitHostPort(flagValue(c.Cmd, "web.listen-address")); err != nil {
		t.Errorf("CMD --web.listen-address: %v", err)
	} else if _, ok := c.ExposedPorts[port+"/tcp"]; !ok {
		t.Errorf("the image exposes %v, not the web port %s of its CMD", c.ExposedPorts, port)
	}
	rules := flagValue(c.Cmd, "rules")
	if path.Dir(rules) != imageRulesDir {
		t.Errorf("CMD --rules=%q is not in %s, where the image holds the policies", rules, imageRulesDir)
	}
	for name := range files {
		if ok, _ := path.Match(strings.TrimPrefix(rules, "/"), name); ok {
			return
		}
	}
	t.Errorf("CMD --rules=%q matches no file of the image", rules)
}

// checkImageFiles checks every entry of the image: the regular files it
// should hold and nothing else, their content, and owners and modes.
func checkImageFiles(t *testing.T, files map[string]imageFile) {
	t.Helper()
	want := map[string][]byte{ // regular files: their content, nil when checked below
		strings.TrimPrefix(imageBinary, "/"):   nil,
		strings.TrimPrefix(imageCABundle, "/"): nil,
		"etc/passwd":                           readFile(t, "compose/passwd"),
		"etc/group":                            readFile(t, "compose/group"),
	}
	rules, err := filepath.Glob("../rules/*.yml")
	if err != nil || len(rules) == 0 {
		t.Fatalf("no policies in ../rules (%v)", err)
	}
	for _, r := range rules {
		want[path.Join(strings.TrimPrefix(imageRulesDir, "/"), filepath.Base(r))] = readFile(t, r)
	}

	state := strings.TrimPrefix(imageStateDir, "/")
	for name, f := range files {
		h := f.hdr
		owner := fmt.Sprintf("%d:%d", h.Uid, h.Gid)
		mode := h.FileInfo().Mode()
		switch h.Typeflag {
		case tar.TypeDir:
			wantOwner, wantMode := "0:0", os.ModeDir|0o755
			switch name {
			case state: // the watcher writes its JetStream data there
				wantOwner = imageUser
			case "tmp":
				wantMode = os.ModeDir | os.ModeSticky | 0o777
			}
			if owner != wantOwner || mode != wantMode {
				t.Errorf("/%s: %s %s, want %s %s", name, owner, mode, wantOwner, wantMode)
			}
		case tar.TypeReg:
			content, ok := want[name]
			if !ok {
				t.Errorf("/%s: a file the image should not hold", name)
				continue
			}
			delete(want, name)
			wantMode := os.FileMode(0o644)
			if name == strings.TrimPrefix(imageBinary, "/") {
				wantMode = 0o755
			}
			if owner != "0:0" || mode != wantMode {
				t.Errorf("/%s: %s %s, want 0:0 %s (the watcher must not be able to change it)", name, owner, mode, wantMode)
			}
			if content != nil && !bytes.Equal(f.data, content) {
				t.Errorf("/%s differs from the repository's copy", name)
			}
		default:
			t.Errorf("/%s: type %q; the image holds only directories and regular files", name, h.Typeflag)
		}
	}
	for name := range want {
		t.Errorf("/%s is missing from the image", name)
	}
	if f, ok := files[state]; !ok || f.hdr.Typeflag != tar.TypeDir {
		t.Errorf("%s is missing from the image", imageStateDir)
	}

	checkPasswd(t, files["etc/passwd"].data, files["etc/group"].data)

	// The CA bundle: Go's crypto/x509 reads this file first on Linux.
	rest, n := files[strings.TrimPrefix(imageCABundle, "/")].data, 0
	for {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			break
		}
		if _, err := x509.ParseCertificate(b.Bytes); err != nil {
			t.Errorf("%s: certificate %d: %v", imageCABundle, n+1, err)
		}
		n++
	}
	if n < 50 || len(bytes.TrimSpace(rest)) != 0 {
		t.Errorf("%s: %d certificates and %d bytes that are not PEM; want Debian's bundle (about 140)", imageCABundle, n, len(bytes.TrimSpace(rest)))
	}
}

// checkPasswd checks that the image's user database names uid and gid
// 65532 with the state directory as home: user.Current (the default SSH
// user) and "~/" in policies read it.
func checkPasswd(t *testing.T, passwd, group []byte) {
	t.Helper()
	uid, gid, _ := strings.Cut(imageUser, ":")
	var user string
	sc := bufio.NewScanner(bytes.NewReader(passwd))
	for sc.Scan() {
		f := strings.Split(sc.Text(), ":")
		if len(f) != 7 {
			t.Errorf("/etc/passwd: %q does not have 7 fields", sc.Text())
			continue
		}
		if f[2] == uid {
			user = f[0]
			if f[3] != gid || f[5] != imageStateDir {
				t.Errorf("/etc/passwd: %q: want gid %s and home %s", sc.Text(), gid, imageStateDir)
			}
		}
	}
	if user == "" {
		t.Errorf("/etc/passwd names no user %s", uid)
	}
	named := false
	sc = bufio.NewScanner(bytes.NewReader(group))
	for sc.Scan() {
		if f := strings.Split(sc.Text(), ":"); len(f) == 4 && f[2] == gid {
			named = true
		}
	}
	if !named {
		t.Errorf("/etc/group names no group %s", gid)
	}
}

// checkImageBinary checks that the image's watcher needs nothing the image
// lacks (no loader, no shared library) and carries nothing it does not
// need (symbols, DWARF, build paths).
func checkImageBinary(t *testing.T, bin []byte) {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("%s: %v", imageBinary, err)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("%s has a program interpreter: it is dynamically linked (build with CGO_ENABLED=0)", imageBinary)
		}
	}
	if libs, err := f.ImportedLibraries(); err != nil || len(libs) != 0 {
		t.Errorf("%s needs shared libraries %q (%v); the image has none", imageBinary, libs, err)
	}
	for _, s := range f.Sections {
		if s.Name == ".symtab" || strings.HasPrefix(s.Name, ".debug_") || strings.HasPrefix(s.Name, ".zdebug_") {
			t.Errorf("%s has section %s: build with -ldflags \"-s -w\"", imageBinary, s.Name)
		}
	}
	info, err := buildinfo.Read(bytes.NewReader(bin))
	if err != nil {
		t.Fatalf("%s: build information: %v", imageBinary, err)
	}
	settings := map[string]string{}
	for _, s := range info.Settings {
		settings[s.Key] = s.Value
	}
	if settings["CGO_ENABLED"] != "0" || settings["-trimpath"] != "true" {
		t.Errorf("%s built with CGO_ENABLED=%q -trimpath=%q; want 0 and true", imageBinary, settings["CGO_ENABLED"], settings["-trimpath"])
	}
}

// runImage runs the image as built: its ENTRYPOINT and CMD, with the two
// listen addresses moved to free ports (the host's network is shared) and
// --prometheus.url added. A policy for a test service is mounted beside
// the image's own, which the CMD's --rules loads too: an invalid one would
// stop the watcher at start.
func runImage(t *testing.T, podman, host, tag string, img imageConfig) {
	t.Helper()
	exp := testutil.NewExporter(t)
	exp.Set("image_test_orders_per_minute", map[string]string{"service": "image-test"}, 120)
	prom := testutil.StartPrometheus(t, exp.URL)

	dir := t.TempDir()
	policy := filepath.Join(dir, "image-test.yml")
	err := os.WriteFile(policy, []byte(`policies:
  - name: image-test
    match: {service: image-test, environment: test}
    window: 3s
    interval: 1s
    initial_delay: 0s
    checks:
      - {name: orders-per-minute, query: 'image_test_orders_per_minute{service="{{ .Service }}"}', min: 50}
    rollback: {mode: publish}
`), 0o644)
	if err != nil {
		t.Fatal(err)
	}

	natsAddr, webAddr := testutil.FreeAddr(t), testutil.FreeAddr(t)
	args := slices.Clone(img.Config.Cmd)
	for i, a := range args {
		switch {
		case strings.HasPrefix(a, "--nats.listen="):
			args[i] = "--nats.listen=" + natsAddr
		case strings.HasPrefix(a, "--web.listen-address="):
			args[i] = "--web.listen-address=" + webAddr
		}
	}
	args = append(args, "--prometheus.url="+prom.URL)

	mountedPolicy := path.Join(imageRulesDir, "image-test.yml")
	name := fmt.Sprintf("watcher-image-test-%d", os.Getpid())
	podmanRun := []string{"run", "--detach", "--name", name, "--runtime=runc", "--network=host",
		// Podman asks for 1048576 open files and 4194304 processes unless
		// told otherwise, and fails where it may not raise its own limits
		// (no CAP_SYS_RESOURCE): ask for what this process has.
		"--ulimit=nofile=" + nofile(t), "--ulimit=nproc=4096:4096",
		"--volume=" + policy + ":" + mountedPolicy + ":ro",
		tag}
	output(t, podman, append(podmanRun, args...)...)
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := exec.Command(podman, "logs", name).CombinedOutput()
			t.Logf("podman logs %s:\n%s", name, logs)
		}
		_ = exec.Command(podman, "rm", "--force", name).Run()
	})

	web := "http://" + webAddr
	testutil.Eventually(t, time.Minute, "the container's /-/ready", func() bool {
		if state := strings.TrimSpace(string(output(t, podman, "inspect", "--format={{.State.Status}}", name))); state != "running" {
			t.Fatalf("container %s is %s, not running", name, state)
		}
		resp, err := http.Get(web + "/-/ready")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})

	pid := strings.TrimSpace(string(output(t, podman, "inspect", "--format={{.State.Pid}}", name)))
	status := string(readFile(t, "/proc/"+pid+"/status"))
	uid, gid, _ := strings.Cut(imageUser, ":")
	for _, want := range []string{fmt.Sprintf("Uid:\t%[1]s\t%[1]s\t%[1]s\t%[1]s\n", uid), fmt.Sprintf("Gid:\t%[1]s\t%[1]s\t%[1]s\t%[1]s\n", gid)} {
		if !strings.Contains(status, want) {
			t.Errorf("the container's watcher (pid %s) does not run as %s: /proc/%s/status:\n%s", pid, imageUser, pid, status)
		}
	}

	resp, err := http.Get(web + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	metrics, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	revision := strings.TrimSpace(string(output(t, "git", "-C", "..", "rev-parse", "--short", "HEAD")))
	if want := `revision="` + revision + `"`; !strings.Contains(string(metrics), "watcher_build_info{") || !strings.Contains(string(metrics), want) {
		t.Errorf("/metrics: no watcher_build_info with %s (make image passes REVISION)", want)
	}

	// A deploy published from this machine to the container's NATS.
	natsURL := "nats://" + natsAddr
	out, err := exec.Command(host, "publish", "--nats.url="+natsURL, "--service=image-test", "--environment=test",
		"--version=1.0.0", "--wait=1m").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "verdict: passed") {
		t.Fatalf("watcher publish --wait: %v\n%s", err, out)
	}
	// The audit, read by the image's own watcher through the PATH, as the
	// Dockerfile's comment on CMD says (docker exec <container> watcher ...).
	var kinds []string
	hist := output(t, podman, "exec", name, "watcher", "history", "--nats.url="+natsURL, "--service=image-test", "--json")
	for _, line := range strings.Split(strings.TrimSpace(string(hist)), "\n") {
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("watcher history --json: %q: %v", line, err)
		}
		kinds = append(kinds, r.Kind)
	}
	if !slices.Contains(kinds, audit.RunStarted) || !slices.Contains(kinds, audit.RunPassed) {
		t.Errorf("the audit of image-test has %q; want %s and %s", kinds, audit.RunStarted, audit.RunPassed)
	}

	// What the container wrote: the lock and the JetStream data, in the
	// state directory only. Podman made the mount point of the policy and
	// its parents are changed directories in its eyes, as are the state
	// directory's.
	allowed := map[string]bool{}
	for _, p := range []string{mountedPolicy, imageStateDir} {
		for ; p != "/"; p = path.Dir(p) {
			allowed[p] = true
		}
	}
	diff := strings.TrimSpace(string(output(t, podman, "diff", name)))
	for _, line := range strings.Split(diff, "\n") {
		_, p, _ := strings.Cut(line, " ")
		if !allowed[p] && !strings.HasPrefix(p, imageStateDir+"/") {
			t.Errorf("podman diff %s: %q: the watcher wrote outside %s", name, line, imageStateDir)
		}
	}
	if !strings.Contains(diff, path.Join(imageStateDir, lockFileName)) {
		t.Errorf("podman diff %s shows no %s:\n%s", name, path.Join(imageStateDir, lockFileName), diff)
	}
}

// lockFileName is the file the watcher locks in --storage.path (README
// "Commands").
const lockFileName = "watcher.lock"

// nofile is the open-file limit of this process, soft:hard.
func nofile(t *testing.T) string {
	t.Helper()
	var r syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &r); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", r.Cur, r.Max)
}
