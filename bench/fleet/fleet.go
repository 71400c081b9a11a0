package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// fleet is one release tree per host under root/<ip>, as a deploy
// leaves it: releases v0, v1, v2 deployed in that order, current -> v2
// (absolute, as `ln -s $(readlink ...)` writes it) and v2/previousVersion
// naming v1. Everything belongs to the benchmark user, who does the
// rollback on both sides.
type fleet struct {
	root     string
	ips      []string
	uid, gid int
}

func (f fleet) hostDir(ip string) string { return filepath.Join(f.root, ip) }
func (f fleet) link(ip string) string    { return filepath.Join(f.hostDir(ip), "current") }
func (f fleet) rel(ip, v string) string  { return filepath.Join(f.hostDir(ip), "releases", v) }

func (f fleet) create() error {
	for _, ip := range f.ips {
		for i, v := range []string{"v0", "v1", "v2"} {
			dir := f.rel(ip, v)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(filepath.Join(dir, "VERSION"), []byte(v+"\n"), 0o644); err != nil {
				return err
			}
			mt := time.Now().Add(time.Duration(i-2) * time.Hour)
			if err := os.Chtimes(dir, mt, mt); err != nil {
				return err
			}
		}
	}
	for _, ip := range f.ips {
		if err := filepath.WalkDir(f.hostDir(ip), func(p string, _ fs.DirEntry, err error) error {
			if err != nil {
				return err
			}
			return os.Lchown(p, f.uid, f.gid)
		}); err != nil {
			return err
		}
	}
	return f.reset()
}

// reset puts every host back where a rollback starts: current -> v2 (swapped
// in atomically), v2/previousVersion naming v1, no ROLLED_BACK marker, no
// temporary files left by either side. Then it syncs, so that neither side's
// measured fsyncs flush the reset's writes.
func (f fleet) reset() error {
	for _, ip := range f.ips {
		dir := f.hostDir(ip)
		leftovers, _ := filepath.Glob(filepath.Join(dir, ".current.tmp-*"))
		more, _ := filepath.Glob(filepath.Join(f.rel(ip, "v2"), ".ROLLED_BACK.tmp-*"))
		leftovers = append(leftovers, more...)
		leftovers = append(leftovers, filepath.Join(dir, "current.tmp"),
			filepath.Join(f.rel(ip, "v2"), "ROLLED_BACK"), filepath.Join(f.rel(ip, "v1"), "ROLLED_BACK"))
		for _, p := range leftovers {
			if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
		}
		pv := filepath.Join(f.rel(ip, "v2"), "previousVersion")
		want := f.rel(ip, "v1") + "\n"
		if b, err := os.ReadFile(pv); err != nil || string(b) != want {
			if err := os.WriteFile(pv, []byte(want), 0o644); err != nil {
				return err
			}
			if err := os.Lchown(pv, f.uid, f.gid); err != nil {
				return err
			}
		}
		if cur, err := os.Readlink(f.link(ip)); err == nil && cur == f.rel(ip, "v2") {
			continue
		}
		tmp := filepath.Join(dir, ".reset.tmp")
		_ = os.Remove(tmp)
		if err := os.Symlink(f.rel(ip, "v2"), tmp); err != nil {
			return err
		}
		if err := os.Lchown(tmp, f.uid, f.gid); err != nil {
			return err
		}
		if err := os.Rename(tmp, f.link(ip)); err != nil {
			return err
		}
	}
	syscall.Sync()
	return nil
}

// verify checks that every host was rolled back: current -> v1, and, when
// marked, a ROLLED_BACK marker in v2; no temporary file left anywhere.
func (f fleet) verify(marked bool) error {
	var bad []string
	for _, ip := range f.ips {
		cur, err := os.Readlink(f.link(ip))
		if err != nil {
			bad = append(bad, fmt.Sprintf("%s: %v", ip, err))
			continue
		}
		if filepath.Join(f.hostDir(ip), cur) != f.rel(ip, "v1") && cur != f.rel(ip, "v1") {
			bad = append(bad, fmt.Sprintf("%s: current -> %s, want %s", ip, cur, f.rel(ip, "v1")))
		}
		if _, err := os.Lstat(filepath.Join(f.rel(ip, "v2"), "ROLLED_BACK")); marked && err != nil {
			bad = append(bad, fmt.Sprintf("%s: no ROLLED_BACK marker in v2: %v", ip, err))
		}
		tmps, _ := filepath.Glob(filepath.Join(f.hostDir(ip), "*.tmp*"))
		hidden, _ := filepath.Glob(filepath.Join(f.hostDir(ip), ".*.tmp*"))
		if l := append(tmps, hidden...); len(l) > 0 {
			bad = append(bad, fmt.Sprintf("%s: temporary files left: %v", ip, l))
		}
	}
	if len(bad) > 0 {
		if len(bad) > 5 {
			bad = append(bad[:5], fmt.Sprintf("and %d more", len(bad)-5))
		}
		return fmt.Errorf("fleet not rolled back as expected: %s", strings.Join(bad, "; "))
	}
	return nil
}
