package rollback

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestLocalWriteFile(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "previousVersion")
	for _, content := range []string{"first\n", "second\n"} {
		if err := (Local{}).WriteFile(name, []byte(content), 0o640); err != nil {
			t.Fatal(err)
		}
		if got := readFile(t, name); got != content {
			t.Errorf("content %q, want %q", got, content)
		}
	}
	fi, err := os.Stat(name)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640 regardless of umask", fi.Mode().Perm())
	}
	assertNoTemp(t, dir)
}

func TestLocalWriteFileFailure(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string) string
		err   error
	}{
		{"directory missing", func(t *testing.T, dir string) string {
			return filepath.Join(dir, "missing", "f")
		}, fs.ErrNotExist},
		{"name is a directory", func(t *testing.T, dir string) string {
			d := filepath.Join(dir, "d")
			mkdir(t, filepath.Join(d, "x"))
			return d
		}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			name := tc.setup(t, dir)
			err := (Local{}).WriteFile(name, []byte("x"), 0o644)
			if err == nil {
				t.Fatal("no error")
			}
			if tc.err != nil && !errors.Is(err, tc.err) {
				t.Errorf("error %q is not %v", err, tc.err)
			}
			if !strings.Contains(err.Error(), name) {
				t.Errorf("error %q does not name %s", err, name)
			}
			assertNoTemp(t, dir)
		})
	}
}

func TestLocalReadDirIsLstat(t *testing.T) {
	dir := t.TempDir()
	mkdir(t, filepath.Join(dir, "a"))
	symlink(t, "a", filepath.Join(dir, "b"))
	infos, err := (Local{}).ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 2 || !infos[0].IsDir() || infos[1].Mode()&fs.ModeSymlink == 0 {
		t.Errorf("got %v", infos)
	}
}

func TestLocalRun(t *testing.T) {
	tests := []struct {
		name string
		argv []string
		env  []string
		want string
	}{
		{"metacharacters are literal", []string{"printf", "%s", "a;b $(id) `id` | & > /tmp/x"}, nil,
			"a;b $(id) `id` | & > /tmp/x"},
		{"argument is not re-parsed by a script's shell", []string{"sh", "-c", `printf %s "$1"`, "x", "a;b $(id)"}, nil,
			"a;b $(id)"},
		{"extra environment", []string{"sh", "-c", `printf %s "$ROLLBACK_TO"`}, []string{"ROLLBACK_TO=2026.11.24-3"},
			"2026.11.24-3"},
		{"stderr is captured", []string{"sh", "-c", "printf out; printf err >&2"}, nil, "outerr"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := (Local{}).Run(t.Context(), tc.argv, tc.env)
			if err != nil {
				t.Fatal(err)
			}
			if string(out) != tc.want {
				t.Errorf("output %q, want %q", out, tc.want)
			}
		})
	}
}

func TestLocalRunErrors(t *testing.T) {
	t.Run("empty argv", func(t *testing.T) {
		for _, argv := range [][]string{nil, {}, {""}} {
			if _, err := (Local{}).Run(t.Context(), argv, nil); err == nil {
				t.Errorf("%q: no error", argv)
			}
		}
	})
	t.Run("exit status", func(t *testing.T) {
		out, err := (Local{}).Run(t.Context(), []string{"sh", "-c", "echo broken; exit 3"}, nil)
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 3 {
			t.Fatalf("error %v, want exit status 3", err)
		}
		if string(out) != "broken\n" {
			t.Errorf("output %q", out)
		}
	})
	t.Run("missing program", func(t *testing.T) {
		_, err := (Local{}).Run(t.Context(), []string{"/nonexistent/program"}, nil)
		if !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("error %v, want not exist", err)
		}
	})
	t.Run("context cancels", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer cancel()
		start := time.Now()
		_, err := (Local{}).Run(ctx, []string{"sleep", "30"}, nil)
		if err == nil {
			t.Fatal("no error")
		}
		if d := time.Since(start); d > 20*time.Second {
			t.Errorf("took %v", d)
		}
	})
	t.Run("output is bounded", func(t *testing.T) {
		// 200000 bytes: "a" * 100000 then "b" * 100000.
		script := `i=0; while [ $i -lt 1000 ]; do printf '%0100d' 0 | tr 0 a; i=$((i+1)); done;` +
			` i=0; while [ $i -lt 1000 ]; do printf '%0100d' 0 | tr 0 b; i=$((i+1)); done`
		out, err := (Local{}).Run(t.Context(), []string{"sh", "-c", script}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if len(out) > maxRunOutput+100 {
			t.Errorf("kept %d bytes", len(out))
		}
		if !bytes.HasPrefix(out, bytes.Repeat([]byte("a"), maxRunOutput/2)) ||
			!bytes.HasSuffix(out, bytes.Repeat([]byte("b"), maxRunOutput/2)) {
			t.Error("head or tail not kept")
		}
		if want := "[... 134464 bytes of output truncated ...]"; !bytes.Contains(out, []byte(want)) {
			t.Errorf("no %q in %q", want, out[maxRunOutput/2-10:maxRunOutput/2+60])
		}
	})
}

func TestCappedOutput(t *testing.T) {
	for _, n := range []int{0, 1, maxRunOutput / 2, maxRunOutput, maxRunOutput + 1, 5 * maxRunOutput} {
		var in bytes.Buffer
		for i := range n {
			in.WriteByte(byte('a' + i%26))
		}
		for _, chunk := range []int{1, 7, 4096, n + 1} {
			c := &cappedOutput{}
			data := in.Bytes()
			for len(data) > 0 {
				k := min(chunk, len(data))
				if w, err := c.Write(data[:k]); w != k || err != nil {
					t.Fatalf("Write = %d, %v", w, err)
				}
				data = data[k:]
			}
			got := c.Bytes()
			if n <= maxRunOutput {
				if !bytes.Equal(got, in.Bytes()) {
					t.Errorf("n=%d chunk=%d: output altered", n, chunk)
				}
				continue
			}
			half := maxRunOutput / 2
			if !bytes.HasPrefix(got, in.Bytes()[:half]) || !bytes.HasSuffix(got, in.Bytes()[n-half:]) ||
				!bytes.Contains(got, []byte("bytes of output truncated")) {
				t.Errorf("n=%d chunk=%d: head/tail/marker wrong", n, chunk)
			}
		}
	}
}
