package deploys

import (
	"errors"
	"testing"
	"time"

	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

// TestFindBefore: Query.Before finds the deploy of an id published again
// as the earlier one, not the newest: `publish --wait` reads that one's
// run.
func TestFindBefore(t *testing.T) {
	n := testutil.StartNATS(t)
	seqs := map[string][]uint64{}
	for _, id := range []string{"a", "b", "a"} {
		b, err := events.EncodeNative(events.Deploy{ID: id, Service: "shop", Environment: "production", Version: "v1", Time: time.Now().UTC()})
		if err != nil {
			t.Fatal(err)
		}
		ack, err := n.JS.Publish(t.Context(), "deploys.production.shop", b)
		if err != nil {
			t.Fatal(err)
		}
		seqs[id] = append(seqs[id], ack.Sequence)
	}
	find := func(id string, before uint64) (uint64, error) {
		f, err := Find(t.Context(), n.JS, Query{Environment: "production", Service: "shop",
			Match: func(d events.Deploy) bool { return d.ID == id }, Before: before})
		return f.Seq, err
	}
	for _, tc := range []struct {
		id     string
		before uint64
		want   uint64
	}{
		{"a", 0, seqs["a"][1]},
		{"a", seqs["a"][1], seqs["a"][0]},
		{"a", seqs["a"][1] + 1, seqs["a"][1]},
		{"b", seqs["a"][1], seqs["b"][0]},
	} {
		if got, err := find(tc.id, tc.before); err != nil || got != tc.want {
			t.Errorf("%s before %d: sequence %d (%v), want %d", tc.id, tc.before, got, err, tc.want)
		}
	}
	if _, err := find("a", seqs["a"][0]); !errors.Is(err, ErrNotFound) {
		t.Errorf("a before its first event: %v, want ErrNotFound", err)
	}
}
