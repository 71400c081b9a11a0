package audit

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/testutil"
)

func testContext(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// lastMessage returns the newest message in the AUDIT stream, raw.
func lastMessage(t *testing.T, ctx context.Context, js jetstream.JetStream) *jetstream.RawStreamMsg {
	t.Helper()
	s, err := js.Stream(ctx, bus.AuditStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetMsg(ctx, info.State.LastSeq)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestRecordStampsAndPublishes(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := testContext(t)
	now := time.Date(2026, 11, 25, 18, 0, 0, 0, time.UTC)
	p := &Publisher{JS: n.JS, Now: func() time.Time { return now }}

	if err := p.Record(ctx, Record{Kind: RunStarted, RunID: "r-1", Service: "shop", Environment: "production", Message: "started"}); err != nil {
		t.Fatal(err)
	}
	m := lastMessage(t, ctx, n.JS)
	if m.Subject != "audit.production.shop" {
		t.Errorf("subject %q, want audit.production.shop", m.Subject)
	}
	// detail is an object, never null or absent, so that a reader of the
	// stream can look a field up without checking it first.
	if !strings.Contains(string(m.Data), `"detail":{}`) {
		t.Errorf("record without detail is %s, want \"detail\":{}", m.Data)
	}
	var got Record
	if err := json.Unmarshal(m.Data, &got); err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(now) || got.Kind != RunStarted || got.RunID != "r-1" || got.Message != "started" {
		t.Errorf("stored %+v", got)
	}

	// A record's own time is kept; detail is stored as given.
	own := now.Add(-time.Hour)
	if err := p.Record(ctx, Record{Time: own, Kind: Measurement, Service: "shop", Environment: "production",
		Detail: map[string]any{"value": 12.5}}); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(lastMessage(t, ctx, n.JS).Data, &got); err != nil {
		t.Fatal(err)
	}
	if !got.Time.Equal(own) || got.Detail["value"] != 12.5 {
		t.Errorf("stored time %s detail %v, want %s and value 12.5", got.Time, got.Detail, own)
	}

	// Without Now, the wall clock in UTC.
	before := time.Now()
	if err := (&Publisher{JS: n.JS}).Record(ctx, Record{Kind: RunPassed, Service: "shop", Environment: "production"}); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(lastMessage(t, ctx, n.JS).Data, &got); err != nil {
		t.Fatal(err)
	}
	if got.Time.Before(before.Add(-time.Second)) || got.Time.After(time.Now().Add(time.Second)) || got.Time.Location() != time.UTC {
		t.Errorf("stamped %s, want about %s in UTC", got.Time, before)
	}
}

func TestSubject(t *testing.T) {
	tests := []struct{ env, svc, want string }{
		{"production", "shop", "audit.production.shop"},
		{"production", "shop.api", "audit.production.shop.api"},
		{"prod-eu_1", "Shop-2", "audit.prod-eu_1.Shop-2"},
		{"production", "../../etc", "audit.production._invalid"},
		{"production", "a b", "audit.production._invalid"},
		{"production", "shop.*", "audit.production._invalid"},
		{"production", "shop.>", "audit.production._invalid"},
		{"production", "-shop", "audit.production._invalid"},
		{"production", "", "audit.production._invalid"},
		// Allowed by the name pattern, but empty subject tokens.
		{"production", "a..b", "audit.production._invalid"},
		{"production", "shop.", "audit.production._invalid"},
		{"prod env", "shop", "audit._invalid.shop"},
		{"", "", "audit._invalid._invalid"},
		{"production", strings.Repeat("s", 64), "audit.production._invalid"},
	}
	for _, tc := range tests {
		if got := Subject(tc.env, tc.svc); got != tc.want {
			t.Errorf("Subject(%q, %q) = %q, want %q", tc.env, tc.svc, got, tc.want)
		}
	}
}

// Records about rejected events carry whatever names the event had. They
// must be kept (under audit._invalid.*) and be readable by those names.
func TestRecordInvalidNames(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := testContext(t)
	p := &Publisher{JS: n.JS}
	names := []struct{ env, svc string }{
		{"production", "../../etc"},
		{"production", "a b"},
		{"production", "a..b"},
		{"production", "shop."},
		{"prod env", "shop"},
	}
	for _, nm := range names {
		if err := p.Record(ctx, Record{Kind: EventRejected, Service: nm.svc, Environment: nm.env, Message: "rejected"}); err != nil {
			t.Fatalf("recording service %q environment %q: %v", nm.svc, nm.env, err)
		}
		if m := lastMessage(t, ctx, n.JS); m.Subject != Subject(nm.env, nm.svc) || !strings.Contains(m.Subject, Invalid) {
			t.Errorf("service %q environment %q stored on %q", nm.svc, nm.env, m.Subject)
		}
	}
	if err := p.Record(ctx, Record{Kind: RunStarted, Service: "shop", Environment: "production"}); err != nil {
		t.Fatal(err)
	}

	all, err := Read(ctx, n.JS, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != len(names)+1 {
		t.Fatalf("read %d records, want %d", len(all), len(names)+1)
	}
	for i, nm := range names {
		if all[i].Service != nm.svc || all[i].Environment != nm.env {
			t.Errorf("record %d: service %q environment %q, want %q %q", i, all[i].Service, all[i].Environment, nm.svc, nm.env)
		}
	}

	read := func(f Filter) []Record {
		t.Helper()
		recs, err := Read(ctx, n.JS, f)
		if err != nil {
			t.Fatalf("Read(%+v): %v", f, err)
		}
		return recs
	}
	for _, nm := range []string{"../../etc", "a b", "a..b", "shop."} {
		recs := read(Filter{Service: nm})
		if len(recs) != 1 || recs[0].Service != nm {
			t.Errorf("Read(service %q) = %+v, want its one record", nm, recs)
		}
	}
	if recs := read(Filter{Environment: "prod env"}); len(recs) != 1 || recs[0].Environment != "prod env" {
		t.Errorf("Read(environment %q) = %+v, want its one record", "prod env", recs)
	}
	// "_invalid" selects every record whose service was not a token.
	if recs := read(Filter{Service: Invalid}); len(recs) != 4 {
		t.Errorf("Read(service _invalid) = %d records, want 4", len(recs))
	}
	// A name with no records reads as none, not as an error.
	if recs := read(Filter{Service: "x y"}); len(recs) != 0 {
		t.Errorf("Read(service %q) = %+v, want none", "x y", recs)
	}
}

func TestRead(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := testContext(t)
	p := &Publisher{JS: n.JS}
	services := []string{"shop", "cart", "shop.api"}
	envs := []string{"production", "staging"}
	const total = 1000
	type key struct{ svc, env string }
	count := map[key]int{}
	countRun := map[string]int{}
	for i := range total {
		r := Record{
			Kind:        Measurement,
			RunID:       fmt.Sprintf("run-%d", i%7),
			Service:     services[i%len(services)],
			Environment: envs[(i/3)%len(envs)],
			Message:     fmt.Sprintf("%04d", i),
		}
		if err := p.Record(ctx, r); err != nil {
			t.Fatal(err)
		}
		count[key{r.Service, r.Environment}]++
		countRun[r.RunID]++
	}
	// Something that is not a record: the stream may be shared.
	if _, err := n.JS.Publish(ctx, "audit.production.shop", []byte("not json")); err != nil {
		t.Fatal(err)
	}

	read := func(f Filter) []Record {
		t.Helper()
		recs, err := Read(ctx, n.JS, f)
		if err != nil {
			t.Fatalf("Read(%+v): %v", f, err)
		}
		return recs
	}
	// inOrder checks that recs are oldest first and all match keep.
	inOrder := func(f Filter, recs []Record, keep func(Record) bool) {
		t.Helper()
		for i, r := range recs {
			if !keep(r) {
				t.Errorf("Read(%+v): record %s (%s/%s %s) does not match", f, r.Message, r.Environment, r.Service, r.RunID)
			}
			if i > 0 && r.Message <= recs[i-1].Message {
				t.Errorf("Read(%+v): record %s after %s", f, r.Message, recs[i-1].Message)
			}
		}
	}

	all := read(Filter{})
	if len(all) != total {
		t.Fatalf("Read(all) = %d records, want %d", len(all), total)
	}
	inOrder(Filter{}, all, func(Record) bool { return true })

	for _, svc := range services {
		f := Filter{Service: svc}
		recs := read(f)
		if want := count[key{svc, "production"}] + count[key{svc, "staging"}]; len(recs) != want {
			t.Errorf("Read(service %s) = %d records, want %d", svc, len(recs), want)
		}
		inOrder(f, recs, func(r Record) bool { return r.Service == svc })
		for _, env := range envs {
			f := Filter{Service: svc, Environment: env}
			recs := read(f)
			if want := count[key{svc, env}]; len(recs) != want {
				t.Errorf("Read(%s/%s) = %d records, want %d", env, svc, len(recs), want)
			}
			inOrder(f, recs, func(r Record) bool { return r.Service == svc && r.Environment == env })
		}
	}
	for _, env := range envs {
		f := Filter{Environment: env}
		recs := read(f)
		want := 0
		for _, svc := range services {
			want += count[key{svc, env}]
		}
		if len(recs) != want {
			t.Errorf("Read(environment %s) = %d records, want %d", env, len(recs), want)
		}
		inOrder(f, recs, func(r Record) bool { return r.Environment == env })
	}
	f := Filter{RunID: "run-3", Service: "cart"}
	recs := read(f)
	inOrder(f, recs, func(r Record) bool { return r.RunID == "run-3" && r.Service == "cart" })
	if len(recs) == 0 || len(read(Filter{RunID: "run-3"})) != countRun["run-3"] {
		t.Errorf("Read(run-3) = %d records (cart: %d), want %d", len(read(Filter{RunID: "run-3"})), len(recs), countRun["run-3"])
	}
	if recs := read(Filter{RunID: "no-such-run"}); len(recs) != 0 {
		t.Errorf("Read(no-such-run) = %d records", len(recs))
	}

	// Limit keeps the newest N, still oldest first.
	for _, limit := range []int{1, 10, 256, 257, 999, total, total + 5} {
		f := Filter{Limit: limit}
		recs := read(f)
		want := all[max(0, total-limit):]
		if len(recs) != len(want) {
			t.Errorf("Read(limit %d) = %d records, want %d", limit, len(recs), len(want))
			continue
		}
		for i := range recs {
			if recs[i].Message != want[i].Message {
				t.Errorf("Read(limit %d)[%d] = %s, want %s", limit, i, recs[i].Message, want[i].Message)
				break
			}
		}
	}
	// Limit applies after the filters.
	f = Filter{Service: "shop.api", Environment: "staging", Limit: 5}
	recs = read(f)
	full := read(Filter{Service: "shop.api", Environment: "staging"})
	if len(recs) != 5 || !slices.EqualFunc(recs, full[len(full)-5:], func(a, b Record) bool { return a.Message == b.Message }) {
		t.Errorf("Read(%+v) = %v, want the last 5 of %d", f, messages(recs), len(full))
	}
}

func messages(recs []Record) []string {
	out := make([]string, len(recs))
	for i, r := range recs {
		out[i] = r.Message
	}
	return out
}

// A service whose name has dots spans several subject tokens; it must not
// be confused with a service named after its first token.
func TestServiceWithDots(t *testing.T) {
	n := testutil.StartNATS(t)
	ctx := testContext(t)
	p := &Publisher{JS: n.JS}
	in := []Record{
		{Kind: RunStarted, Service: "shop.api", Environment: "production", Message: "1", Detail: map[string]any{"k": "v"}},
		{Kind: RunStarted, Service: "shop", Environment: "production", Message: "2"},
		{Kind: RunStarted, Service: "shop.api.v2", Environment: "production", Message: "3"},
	}
	for _, r := range in {
		if err := p.Record(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for svc, want := range map[string][]string{"shop.api": {"1"}, "shop": {"2"}, "shop.api.v2": {"3"}} {
		recs, err := Read(ctx, n.JS, Filter{Service: svc, Environment: "production"})
		if err != nil {
			t.Fatal(err)
		}
		if got := messages(recs); !slices.Equal(got, want) {
			t.Errorf("Read(service %s) = %v, want %v", svc, got, want)
		}
	}
	recs, err := Read(ctx, n.JS, Filter{Service: "shop.api"})
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 1 || recs[0].Service != "shop.api" || recs[0].Environment != "production" || recs[0].Detail["k"] != "v" {
		t.Errorf("shop.api round trip: %+v", recs)
	}
}

func TestReadWithoutAuditStream(t *testing.T) {
	srv, err := bus.StartEmbedded("127.0.0.1:0", t.TempDir(), slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	nc, err := nats.Connect(srv.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	_, err = Read(testContext(t), js, Filter{Service: "shop"})
	if err == nil {
		t.Fatal("Read without an AUDIT stream succeeded")
	}
	if !strings.Contains(err.Error(), "no AUDIT stream") || !strings.Contains(err.Error(), "watcher") {
		t.Errorf("error %q does not say the AUDIT stream is missing", err)
	}
}

func TestReadEmptyStream(t *testing.T) {
	n := testutil.StartNATS(t)
	recs, err := Read(testContext(t), n.JS, Filter{Limit: 10})
	if err != nil || len(recs) != 0 {
		t.Errorf("Read of an empty stream = %v, %v; want nothing, no error", recs, err)
	}
}
