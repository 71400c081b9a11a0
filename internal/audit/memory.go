package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
)

// Memory keeps records in memory instead of the AUDIT stream: a drill
// rehearses without one, and tests read back what was recorded. Each record
// goes through JSON on the way in, as with Publisher, so that readers see
// what the stream would hold and a detail that cannot be encoded fails as
// it would in production. Safe for concurrent use; the zero value is ready.
type Memory struct {
	mu   sync.Mutex
	recs []Record
}

// Record keeps r.
func (m *Memory) Record(_ context.Context, r Record) error {
	b, err := json.Marshal(r)
	if err != nil {
		return fmt.Errorf("encoding audit record %s: %w", r.Kind, err)
	}
	var got Record
	if err := json.Unmarshal(b, &got); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = append(m.recs, got)
	return nil
}

// All returns the records kept, oldest first.
func (m *Memory) All() []Record {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.recs)
}

// Count is the number of records of kind.
func (m *Memory) Count(kind string) int {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := 0
	for _, r := range m.recs {
		if r.Kind == kind {
			n++
		}
	}
	return n
}

// Reset forgets every record.
func (m *Memory) Reset() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.recs = nil
}
