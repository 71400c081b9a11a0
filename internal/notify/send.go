package notify

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode"

	"github.com/prometheus/common/version"
)

// Headers of every notification. A receiver dedupes by DeliveryHeader: a
// notification sent again (a watcher killed after the send and before it
// noted it) carries the same id.
const (
	DeliveryHeader  = "X-Watcher-Delivery"
	SignatureHeader = "X-Watcher-Signature"
	KindHeader      = "X-Watcher-Kind"
)

// Sign is the X-Watcher-Signature of body under secret: "sha256=" and the
// hex HMAC-SHA256, as GitHub signs its webhooks.
func Sign(secret, body []byte) string {
	m := hmac.New(sha256.New, secret)
	m.Write(body)
	return "sha256=" + hex.EncodeToString(m.Sum(nil))
}

// errAborted is a delivery given up because the notifier is stopping; the
// record is delivered again to the next notifier.
var errAborted = errors.New("notifier stopping")

// deliver sends body to t, attempting up to n.Attempts times with
// exponential backoff from n.Backoff while the failure is worth retrying.
// It returns the attempts made and the last error; errAborted when ctx
// ended first.
func (n *Notifier) deliver(ctx context.Context, t *Target, kind, delivery string, body []byte) (int, error) {
	wait := n.Backoff
	for attempt := 1; ; attempt++ {
		retry, err := n.post(ctx, t, kind, delivery, body)
		if ctx.Err() != nil {
			return attempt, errAborted
		}
		if err == nil {
			return attempt, nil
		}
		if !retry || attempt >= n.Attempts {
			return attempt, err
		}
		n.counts.WithLabelValues(t.Name, ResultRetried).Inc()
		n.logger.Warn("notification failed; retrying", "target", t, "kind", kind, "delivery", delivery,
			"attempt", attempt, "retry_in", wait, "err", err)
		select {
		case <-ctx.Done():
			return attempt, errAborted
		case <-time.After(wait):
		}
		wait *= 2
	}
}

// post makes one attempt, and says whether a failure is worth another:
// connection errors, timeouts, 408, 429 and 5xx are; a receiver that
// refuses the request (other 4xx) or redirects it will do so again.
func (n *Notifier) post(ctx context.Context, t *Target, kind, delivery string, body []byte) (bool, error) {
	ctx, cancel := context.WithTimeout(ctx, n.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, t.url, bytes.NewReader(body))
	if err != nil {
		return false, errors.New("cannot build the request") // its error would quote the URL
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("User-Agent", "rollback-watcher/"+version.Version)
	req.Header.Set(DeliveryHeader, delivery)
	req.Header.Set(KindHeader, kind)
	if t.secret != nil {
		req.Header.Set(SignatureHeader, Sign(t.secret, body))
	}
	resp, err := n.client.Do(req)
	if err != nil {
		// *url.Error quotes the URL, which may hold a token (Slack's
		// does): keep only what went wrong.
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err
		}
		return true, err
	}
	defer resp.Body.Close()
	snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 256))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		return false, nil
	}
	err = fmt.Errorf("HTTP %s%s", resp.Status, bodyNote(snippet))
	switch {
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return false, fmt.Errorf("%w (redirects are not followed: put the final URL in url_file)", err)
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		return true, err
	}
	return false, err
}

// bodyNote is the start of a response body on one line, for the error:
// Slack says why in it ("invalid_token", "channel_not_found").
func bodyNote(b []byte) string {
	s := strings.Map(func(r rune) rune {
		if unicode.IsControl(r) {
			return ' '
		}
		return r
	}, strings.TrimSpace(string(b)))
	if len(s) > 120 {
		s = strings.ToValidUTF8(s[:120], "") + "..."
	}
	if s == "" {
		return ""
	}
	return ": " + s
}
