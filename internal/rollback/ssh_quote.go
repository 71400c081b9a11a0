package rollback

import (
	"errors"
	"fmt"
	"regexp"
	"strings"
)

// Quoting commands for the remote shell: nothing from an event reaches it
// as syntax.

// envName is what a shell and env(1) take for a variable name.
var envName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)

// shellCommand builds the command line for a POSIX shell that runs argv
// with env added: `exec env 'K=V'... 'argv0' 'arg'...`. Every word is in
// single quotes (each ' inside closes them, adds \' and reopens them), in
// which a POSIX shell gives no character a meaning: spaces, $(...), `...`,
// ;, |, newlines and globs arrive as written. exec makes the command replace the shell, so that a
// signal reaches it.
func shellCommand(argv, env []string) (string, error) {
	if len(argv) == 0 || argv[0] == "" {
		return "", errors.New("run: empty command")
	}
	if strings.HasPrefix(argv[0], "-") {
		return "", fmt.Errorf("run: command %q starts with '-'", argv[0])
	}
	var b strings.Builder
	b.WriteString("exec")
	if len(env) > 0 {
		if strings.Contains(argv[0], "=") {
			return "", fmt.Errorf("run: command %q contains '=', which env(1) would take for a variable", argv[0])
		}
		b.WriteString(" env")
		for _, kv := range env {
			k, _, ok := strings.Cut(kv, "=")
			if !ok || !envName.MatchString(k) {
				return "", fmt.Errorf("run: environment entry %q is not NAME=value", kv)
			}
			if strings.ContainsRune(kv, 0) {
				return "", fmt.Errorf("run: environment entry %s contains a NUL byte", k)
			}
			b.WriteString(" ")
			b.WriteString(shellQuote(kv))
		}
	}
	for i, w := range argv {
		if strings.ContainsRune(w, 0) {
			return "", fmt.Errorf("run: argument %d of %s contains a NUL byte", i, argv[0])
		}
		b.WriteString(" ")
		b.WriteString(shellQuote(w))
	}
	return b.String(), nil
}

// shellQuote quotes s as one word for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// safeWord is what needs no quoting in a suggested command.
var safeWord = regexp.MustCompile(`^[A-Za-z0-9_@%+=:,./-]+$`)

// shellWord quotes s for a command shown to a person, only when needed.
func shellWord(s string) string {
	if safeWord.MatchString(s) {
		return s
	}
	return shellQuote(s)
}
