package notify

import (
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"strings"

	"github.com/rollback-watcher/watcher/internal/config"
)

// Target is a configured target with its URL and secret read from their
// files. Neither is ever printed: String and LogValue show the name.
type Target struct {
	config.NotifyTarget
	url    string
	secret []byte
}

// String names the target without its URL.
func (t *Target) String() string { return t.Name + " (" + t.Kind + ")" }

// LogValue keeps the URL and the secret out of logs.
func (t *Target) LogValue() slog.Value { return slog.StringValue(t.String()) }

// Targets reads the URL and secret files of the configured targets. A
// missing file, an empty secret or a URL that is not absolute http(s) is an
// error naming the target and the file, never the file's content.
func Targets(cfg []config.NotifyTarget) ([]*Target, error) {
	out := make([]*Target, 0, len(cfg))
	for _, c := range cfg {
		t := &Target{NotifyTarget: c}
		u, err := readSecret(c.URLFile)
		if err != nil {
			return nil, fmt.Errorf("notify %s: url_file: %w", c.Name, err)
		}
		// url.Parse's errors quote the URL: say what is wrong without it.
		pu, err := url.Parse(u)
		if err != nil || pu.Host == "" || (pu.Scheme != "http" && pu.Scheme != "https") {
			return nil, fmt.Errorf("notify %s: url_file %s does not hold an absolute http(s) URL", c.Name, c.URLFile)
		}
		t.url = u
		if c.SecretFile != "" {
			s, err := readSecret(c.SecretFile)
			if err != nil {
				return nil, fmt.Errorf("notify %s: secret_file: %w", c.Name, err)
			}
			t.secret = []byte(s)
		}
		out = append(out, t)
	}
	return out, nil
}

func readSecret(file string) (string, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return "", err // names the file, not its content
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("%s is empty", file)
	}
	return s, nil
}
