package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollback"
)

// The drill is the rehearsal the seed article asks for at every deploy to a
// test environment: deploy the new release, roll back, deploy it again. It
// goes through the same executor as a real rollback (data step included),
// so a rollback that would not work is found before it is needed.
func addDrill(app *kingpin.Application, cmds map[string]func(context.Context, *env) error) {
	cmd := app.Command("drill", "Rehearse the rollback: activate the release, roll back through the executor (data step included), activate it again, checking each step on each host.")
	var f configFlags
	var service, environment, release string
	var hosts []string
	cmd.Flag("config.file", "Configuration file (rule files).").StringVar(&f.file)
	cmd.Flag("rules", "Policy files or globs; repeatable.").StringsVar(&f.rules)
	cmd.Flag("service", "Service to drill; its policy says how to roll it back.").Required().StringVar(&service)
	cmd.Flag("environment", "Environment to drill.").Required().StringVar(&environment)
	cmd.Flag("release", "The release directory to activate, roll back from, and activate again.").Required().StringVar(&release)
	cmd.Flag("host", "Host to drill on (default: the policy's hosts, else this machine); repeatable.").StringsVar(&hosts)
	cmds["drill"] = func(ctx context.Context, e *env) error {
		if !filepath.IsAbs(release) || filepath.Clean(release) != release {
			return usageErr("--release must be an absolute, clean path, got %q", release)
		}
		d := events.Deploy{ID: "drill", Service: service, Environment: environment, Version: filepath.Base(release), Hosts: hosts}
		if err := d.Validate(); err != nil {
			return usageErr("%v", err)
		}
		cfg, err := e.load(&f)
		if err != nil {
			return usageErr("%v", err)
		}
		set, err := policy.Load(cfg.RuleFiles...)
		if err != nil {
			return fmt.Errorf("policies are invalid (`watcher check` lists every problem): %w", err)
		}
		p := set.Match(service, environment)
		if p == nil {
			return fmt.Errorf("no policy matches service %s in environment %s: nothing says how to roll it back", service, environment)
		}
		pool := rollback.NewSSHPool(0)
		defer pool.Close()
		dr := &drill{policy: p, set: set, release: release, service: service, environment: environment, hosts: hosts,
			dial: pool.Dial, out: e.stdout}
		return dr.run(ctx)
	}
}

type drill struct {
	policy               *policy.Policy
	set                  *policy.Set
	release              string
	service, environment string
	hosts                []string
	dial                 rollback.Dialer
	out                  io.Writer

	rows   []drillRow
	failed bool
}

type drillRow struct {
	step, host, result, detail string
}

func (d *drill) report(step, host string, err error, detail string) {
	r := drillRow{step: step, host: host, result: "ok", detail: detail}
	if err != nil {
		r.result, r.detail, d.failed = "FAIL", err.Error(), true
	}
	d.rows = append(d.rows, r)
}

// drillTarget is one host of the drill and what was seen on it.
type drillTarget struct {
	name   string
	target rollback.Target
	link   string
	before string // the release the link pointed at before the drill
}

func (d *drill) run(ctx context.Context) error {
	targets, err := d.targets(ctx)
	if err != nil {
		return err
	}
	start := time.Now()

	// 1. Deploy: the release becomes current, previousVersion names the one
	// it replaced.
	for _, t := range targets {
		prev, err := rollback.Activate(t.target, t.link, d.release)
		if err == nil {
			err = expectLink(t, d.release)
		}
		t.before = prev
		d.report("activate", t.name, err, fmt.Sprintf("%s -> %s", t.link, filepath.Base(d.release)))
	}
	if d.failed {
		return d.finish(start)
	}

	// 2. Roll back through the executor, exactly as a failed validation
	// would have it done.
	rec := &memAudit{}
	x := &rollback.Executor{Policies: func() *policy.Set { return d.set }, Audit: rec, Dial: d.dial}
	res := x.Execute(ctx, events.RollbackRequest{
		ID: "drill-" + events.NewID(), Service: d.service, Environment: d.environment,
		Version: filepath.Base(d.release), Hosts: d.hosts, Reason: "drill: rehearsal of the rollback path",
		Source: events.SourceManual, Policy: d.policy.Name, Time: time.Now().UTC(),
	})
	for _, t := range targets {
		err := res.Err
		if err == nil {
			err = hostError(res, t.name)
		}
		var want string
		if err == nil {
			want, err = d.expectedPrevious(res, t)
		}
		if err == nil {
			err = expectLink(t, want)
		}
		if err == nil {
			err = expectMarker(t.target, d.release, true)
		}
		d.report("rollback", t.name, err, fmt.Sprintf("%s -> %s", filepath.Base(d.release), filepath.Base(want)))
	}
	if p := d.policy.Rollback.Data; p != nil {
		d.report("data", p.RunOn, rec.dataError(), p.Order+": "+strings.Join(p.Command, " "))
	}
	if d.failed {
		return d.finish(start)
	}

	// 3. Deploy again: the release is current once more and carries no
	// marker, so that a later rollback treats it as any other release.
	for _, t := range targets {
		_, err := rollback.Activate(t.target, t.link, d.release)
		if err == nil {
			err = expectLink(t, d.release)
		}
		if err == nil {
			err = expectMarker(t.target, d.release, false)
		}
		d.report("activate again", t.name, err, fmt.Sprintf("%s -> %s", t.link, filepath.Base(d.release)))
	}
	return d.finish(start)
}

// expectedPrevious is the release the executor rolled back to on t.
func (d *drill) expectedPrevious(res rollback.Result, t *drillTarget) (string, error) {
	for _, h := range res.Hosts {
		if h.Host == t.name {
			return h.To, nil
		}
	}
	return "", fmt.Errorf("the executor reported nothing for %s", t.name)
}

func hostError(res rollback.Result, name string) error {
	for _, h := range res.Hosts {
		if h.Host == name && h.Error != "" {
			return errors.New(h.Error)
		}
	}
	return nil
}

func (d *drill) finish(start time.Time) error {
	tw := tabwriter.NewWriter(d.out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STEP\tHOST\tRESULT\tDETAIL")
	for _, r := range d.rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.step, r.host, r.result, oneLine(r.detail))
	}
	_ = tw.Flush()
	if d.failed {
		return fmt.Errorf("drill of %s in %s FAILED after %s: the rollback path does not work as configured; see the table above",
			d.service, d.environment, time.Since(start).Round(time.Millisecond))
	}
	fmt.Fprintf(d.out, "drill of %s in %s passed in %s: deploy, rollback and redeploy all work\n",
		d.service, d.environment, time.Since(start).Round(time.Millisecond))
	return nil
}

func (d *drill) targets(ctx context.Context) ([]*drillTarget, error) {
	hosts := d.hosts
	if len(hosts) == 0 {
		hosts = d.policy.Rollback.Hosts
	}
	data := policy.TemplateData{Service: d.service, Environment: d.environment, Version: filepath.Base(d.release), Labels: map[string]string{}}
	if len(hosts) == 0 {
		data.Host = "local"
		link, err := d.policy.Rollback.RenderLink(data)
		if err != nil {
			return nil, err
		}
		return []*drillTarget{{name: "local", target: rollback.Local{}, link: link}}, nil
	}
	var out []*drillTarget
	for _, h := range hosts {
		t, err := d.dial(ctx, h, d.policy.Rollback.SSH)
		if err != nil {
			return nil, fmt.Errorf("host %s: %w", h, err)
		}
		data.Host = rollback.HostOnly(h)
		link, err := d.policy.Rollback.RenderLink(data)
		if err != nil {
			return nil, err
		}
		out = append(out, &drillTarget{name: t.Name(), target: t, link: link})
	}
	return out, nil
}

func expectLink(t *drillTarget, want string) error {
	got, err := t.target.Readlink(t.link)
	if err != nil {
		return fmt.Errorf("reading %s back: %w", t.link, err)
	}
	if !filepath.IsAbs(got) {
		got = filepath.Join(filepath.Dir(t.link), got)
	}
	if filepath.Clean(got) != filepath.Clean(want) {
		return fmt.Errorf("%s points at %s, want %s", t.link, got, want)
	}
	return nil
}

func expectMarker(t rollback.Target, release string, want bool) error {
	got, err := rollback.RolledBack(t, release)
	if err != nil {
		return err
	}
	if got != want {
		if want {
			return fmt.Errorf("%s has no %s marker after the rollback", release, rollback.MarkerFile)
		}
		return fmt.Errorf("%s still carries a %s marker after it was activated again", release, rollback.MarkerFile)
	}
	return nil
}

// memAudit keeps the drill's records: a rehearsal needs no audit stream.
type memAudit struct{ audit.Memory }

// dataError is the data step's failure as the executor recorded it.
func (m *memAudit) dataError() error {
	for _, r := range m.All() {
		d, _ := r.RollbackResult()
		if d.Data.IsZero() {
			continue
		}
		if host, run, failed := d.Data.Failed(); failed {
			return fmt.Errorf("data step on %s: %v", host, run.Error)
		}
		return nil
	}
	return errors.New("the executor recorded no data step")
}
