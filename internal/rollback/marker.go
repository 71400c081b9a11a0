package rollback

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"time"
)

// The ROLLED_BACK marker of a release rolled away from (README "Release
// layout").

// Marker is the content of a ROLLED_BACK file.
type Marker struct {
	Time      time.Time `json:"time"`
	RunID     string    `json:"run_id,omitempty"`
	RequestID string    `json:"request_id,omitempty"`
	Reason    string    `json:"reason"`
	From      string    `json:"from"`
	To        string    `json:"to"`
}

// MarkRolledBack writes m to releaseDir/ROLLED_BACK, atomically. A zero
// m.Time is set to now.
func MarkRolledBack(t Target, releaseDir string, m Marker) error {
	if err := checkAbs("release", releaseDir); err != nil {
		return err
	}
	b, err := markerJSON(m)
	if err != nil {
		return err
	}
	// Not followed by a directory fsync (ReplaceFile): if a crash loses the
	// marker, the release is merely unmarked, while the link switch it
	// follows was synced. Over SSH this saves four requests per host.
	if err := t.ReplaceFile(filepath.Join(releaseDir, MarkerFile), b); err != nil {
		return fmt.Errorf("mark rolled back: %w", err)
	}
	return nil
}

// markerJSON is the content of a ROLLED_BACK file for m; a zero m.Time is
// now.
func markerJSON(m Marker) ([]byte, error) {
	if m.Time.IsZero() {
		m.Time = time.Now().UTC()
	}
	// Reasons quote thresholds ("12 < min 50"): keep them readable for
	// the person who opens the file.
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(m); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// RolledBack reports whether releaseDir carries a ROLLED_BACK marker. Only
// the file's existence counts: a marker that does not parse still keeps the
// release from being chosen.
func RolledBack(t Target, releaseDir string) (bool, error) {
	_, err := t.Lstat(filepath.Join(releaseDir, MarkerFile))
	switch {
	case err == nil:
		return true, nil
	case errors.Is(err, fs.ErrNotExist):
		return false, nil
	}
	return false, fmt.Errorf("rolled back marker: %w", err)
}

func clearMarker(t Target, releaseDir string) error {
	err := t.Remove(filepath.Join(releaseDir, MarkerFile))
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("remove rolled back marker: %w", err)
	}
	return nil
}
