package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/common/model"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/deploys"
	"github.com/rollback-watcher/watcher/internal/events"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/rollback"
	"github.com/rollback-watcher/watcher/internal/rollbackreq"
)

const defaultNATSURL = "nats://127.0.0.1:4222"

// clientFlags are the connection flags of the commands that talk to a
// running watcher's NATS.
type clientFlags struct{ configFlags }

func addClientFlags(cmd *kingpin.CmdClause) *clientFlags {
	f := &clientFlags{}
	cmd.Flag("config.file", "Configuration file, for NATS credentials and TLS.").StringVar(&f.file)
	addNATSURL(cmd, &f.configFlags, defaultNATSURL)
	return f
}

// connect reaches NATS within a short deadline: a command line tool must
// say "unreachable" quickly rather than hang. The context it returns ends
// when the server reports a permission violation: a publish the server
// refused is dropped without an answer, and waiting for its ack would only
// end in a misleading timeout.
func (f *clientFlags) connect(ctx context.Context, e *env, name string) (context.Context, jetstream.JetStream, func(), error) {
	cfg, err := e.load(&f.configFlags)
	if err != nil {
		return nil, nil, nil, err
	}
	ctx, denied := context.WithCancelCause(ctx)
	nc, err := bus.Connect(cfg.NATS, name, nats.Timeout(5*time.Second), nats.RetryOnFailedConnect(false), nats.MaxReconnects(0),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrPermissionViolation) {
				denied(err)
			}
		}))
	if err != nil {
		denied(nil)
		return nil, nil, nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		denied(nil)
		return nil, nil, nil, err
	}
	return ctx, js, func() { nc.Close(); denied(nil) }, nil
}

// permissionErr is the server's permission violation, if that is what
// ended ctx, said so that the user knows where to grant it.
func permissionErr(ctx context.Context, what string) error {
	if cause := context.Cause(ctx); errors.Is(cause, nats.ErrPermissionViolation) {
		return fmt.Errorf("%s: %w (the NATS user in --config.file is not allowed this: its publish/subscribe permissions are in the server's configuration, nats.server.users for the embedded one)", what, cause)
	}
	return nil
}

func addCheck(app *kingpin.Application, cmds map[string]func(context.Context, *env) error) {
	cmd := app.Command("check", "Validate policy files: exit 0 when valid, 1 with file:line: message per problem.")
	var f configFlags
	cmd.Flag("config.file", "Configuration file whose rule_files to check when no file is given.").StringVar(&f.file)
	cmd.Arg("rules", "Rule files or globs (default: the config file's rule_files, else "+DefaultRules+").").StringsVar(&f.rules)
	var tf trialFlags
	cmd.Flag("prometheus.url", "Also run every check's query on this Prometheus now, as if a deploy had just happened, and print what each check would get; comparisons are replayed as if the deploy had happened an hour ago.").
		IsSetByUser(&f.promSet).StringVar(&f.promURL)
	cmd.Flag("service", "With --prometheus.url: the service templates see (default: the policy's match when it is not a glob).").StringVar(&tf.service)
	cmd.Flag("environment", "With --prometheus.url: the environment templates see (default: as --service).").StringVar(&tf.environment)
	cmd.Flag("version", "With --prometheus.url: the version templates see, and the one a canary comparison looks for in its canary_label.").Default("trial").StringVar(&tf.version)
	cmds["check"] = func(ctx context.Context, e *env) error {
		cfg, err := e.load(&f)
		if err != nil {
			return &exitError{code: 2, err: err}
		}
		set, err := policy.Load(cfg.RuleFiles...)
		if err != nil {
			var le *policy.LoadError
			if errors.As(err, &le) {
				for _, p := range le.Problems {
					fmt.Fprintln(e.stderr, p.String())
				}
				return &exitError{code: 1, err: errors.New("")}
			}
			return &exitError{code: 1, err: err}
		}
		fmt.Fprintf(e.stdout, "%d policies in %d files are valid: %s\n", len(set.Policies), len(set.Files), strings.Join(set.Files, ", "))
		printJudging(e.stdout, set)
		timeoutWarnings(e.stderr, set, time.Duration(cfg.Prometheus.Timeout))
		if !f.promSet {
			return nil
		}
		return trial(ctx, e, cfg, set, tf)
	}
}

// printJudging shows how the policies that compare or score judge a run,
// as the watcher reads them (defaults filled in), since those settings
// are easy to misread in YAML: one line per such policy, then one per
// check that compares or weighs.
func printJudging(w io.Writer, set *policy.Set) {
	for _, p := range set.Policies {
		compares := slices.ContainsFunc(p.Checks, func(c *policy.Check) bool { return c.Compare != nil })
		if p.Score == nil && !compares {
			continue
		}
		fmt.Fprintf(w, "%s (%s:%d):", p.Name, p.File, p.Line)
		if s := p.Score; s != nil {
			fmt.Fprintf(w, " score: pass >= %s, marginal >= %s, on_marginal %s\n", fmtNum(s.Pass), fmtNum(s.Marginal), p.OnMarginal)
		} else {
			fmt.Fprintln(w, " any failed check fails the run")
		}
		for _, c := range p.Checks {
			var attrs []string
			if p.Score != nil {
				attrs = append(attrs, "weight "+fmtNum(c.Weight))
				if c.Critical {
					attrs = append(attrs, "critical")
				}
			}
			if c.DryRun {
				attrs = append(attrs, "dry-run")
			}
			line := "  " + c.Name
			if len(attrs) > 0 {
				line += " (" + strings.Join(attrs, ", ") + ")"
			}
			if th := c.Threshold(); th != "" {
				line += ": " + th
			}
			if cmp := c.Compare; cmp != nil {
				if cmp.Counts() {
					line += fmt.Sprintf("; min_total %d", cmp.MinTotal)
				} else {
					line += fmt.Sprintf("; step %s, min_samples %d", cmp.Step, cmp.MinSamples)
				}
			}
			fmt.Fprintln(w, line)
		}
	}
}

// timeoutWarnings names the policies whose interval is shorter than the
// prometheus.timeout the config file sets: their queries are cut off at
// the interval instead (a slow answer must not make measurements pile up),
// which the file's author may not expect. The policies stay valid.
func timeoutWarnings(w io.Writer, set *policy.Set, timeout time.Duration) {
	if timeout <= 0 {
		return
	}
	for _, p := range set.Policies {
		if interval := time.Duration(p.Interval); interval < timeout {
			fmt.Fprintf(w, "%s:%d: warning: policy %s: its queries get %s (its interval), not prometheus.timeout %s; a slower answer is an error measurement\n",
				p.File, p.Line, p.Name, model.Duration(interval), model.Duration(timeout))
		}
	}
}

func addPublish(app *kingpin.Application, cmds map[string]func(context.Context, *env) error) {
	cmd := app.Command("publish", "Publish a deploy-completed event; prints its id. With --wait, then waits for the deploy's verdict.")
	f := addClientFlags(cmd)
	var d events.Deploy
	labels := map[string]string{}
	var format string
	cmd.Flag("service", "Service deployed.").Required().StringVar(&d.Service)
	cmd.Flag("environment", "Environment deployed to.").Required().StringVar(&d.Environment)
	cmd.Flag("version", "Version deployed (the release directory's name).").Required().StringVar(&d.Version)
	cmd.Flag("previous-version", "Version that was current before.").StringVar(&d.PreviousVersion)
	cmd.Flag("host", "Host deployed to (host or host:port); repeatable.").StringsVar(&d.Hosts)
	cmd.Flag("id", "Event id (default: a new one). The same id twice starts one run.").StringVar(&d.ID)
	cmd.Flag("label", "Label k=v; repeatable.").StringMapVar(&labels)
	cmd.Flag("format", "Event format on the wire.").Default("cdevents").EnumVar(&format, "cdevents", "json")
	wait := addWaitFlag(cmd)
	publish := func(ctx context.Context, e *env) error {
		idGiven := d.ID != ""
		if !idGiven {
			d.ID = events.NewID()
		}
		if len(labels) > 0 {
			d.Labels = labels
		}
		d.Time = time.Now().UTC().Truncate(time.Millisecond)
		if err := d.Validate(); err != nil {
			return usageErr("invalid deploy: %v", err)
		}
		var data []byte
		var err error
		hdr := nats.Header{}
		if format == "json" {
			data, err = events.EncodeNative(d)
			hdr.Set("Content-Type", "application/json")
		} else {
			data, err = events.EncodeCDEvent(d, "rollback-watcher/cli")
			hdr.Set("Content-Type", events.ContentTypeCloudEvents)
		}
		if err != nil {
			return err
		}
		ctx, js, closeNC, err := f.connect(ctx, e, "watcher publish")
		if err != nil {
			return err
		}
		defer closeNC()
		msg := &nats.Msg{Subject: events.Subject(events.DeploysPrefix, d.Environment, d.Service), Data: data, Header: hdr}
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		var auditLast uint64
		if *wait > 0 {
			if auditLast, err = audit.LastSeq(pctx, js); err != nil {
				if perr := permissionErr(ctx, "reading the audit stream"); perr != nil {
					return perr
				}
				return err
			}
		}
		ack, err := js.PublishMsg(pctx, msg, jetstream.WithMsgID(d.ID))
		if err != nil {
			if perr := permissionErr(ctx, "publishing on "+msg.Subject); perr != nil {
				return perr
			}
			return fmt.Errorf("publishing on %s: %w (%s)", msg.Subject, err, publishHint(err, d.ID))
		}
		if ack.Duplicate {
			// Not an error: retrying a publish is safe, and the first one
			// started the run.
			fmt.Fprintf(e.stderr, "watcher publish: event %s was already published; it starts no second run\n", d.ID)
		}
		fmt.Fprintln(e.stdout, d.ID)
		if *wait > 0 {
			return waitVerdict(ctx, e, js, published{deploy: d, idGiven: idGiven, ack: ack, auditLast: auditLast}, *wait)
		}
		return nil
	}
	cmds["publish"] = func(ctx context.Context, e *env) error {
		err := publish(ctx, e)
		if *wait > 0 {
			return waitErr(err)
		}
		return err
	}
}

func addRollback(app *kingpin.Application, cmds map[string]func(context.Context, *env) error) {
	cmd := app.Command("rollback", "Request a manual rollback through the same path as a failed validation; prints the request id.")
	f := addClientFlags(cmd)
	var service, environment, version, toVersion, reason string
	cmd.Flag("service", "Service to roll back.").Required().StringVar(&service)
	cmd.Flag("environment", "Environment to roll back.").Required().StringVar(&environment)
	cmd.Flag("version", "Release to roll back from (default: the version of the newest deploy of the service recorded on DEPLOYS). A request for a release that was rolled back already changes nothing.").
		StringVar(&version)
	cmd.Flag("to-version", "Release to roll back to (default: the deploy's previous version, else the previous release on each host).").StringVar(&toVersion)
	cmd.Flag("reason", "Why; recorded in the audit and the release's ROLLED_BACK marker.").Required().StringVar(&reason)
	cmds["rollback"] = func(ctx context.Context, e *env) error {
		req := rollbackreq.Manual(service, environment, version, toVersion, reason, time.Now())
		// The executor decodes it by the same rules; refuse it here first,
		// before reading DEPLOYS.
		if err := rollbackreq.Validate(req); err != nil {
			return usageErr("invalid rollback request: %v", err)
		}
		subj := rollbackreq.Subject(req)
		ctx, js, closeNC, err := f.connect(ctx, e, "watcher rollback")
		if err != nil {
			return err
		}
		defer closeNC()
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		if err := pinDeploy(pctx, js, &req); err != nil {
			if perr := permissionErr(ctx, "reading the deploys of "+req.Service+" in "+req.Environment); perr != nil {
				return perr
			}
			return err
		}
		if err := rollbackreq.Publish(pctx, js, req); err != nil {
			if perr := permissionErr(ctx, "publishing on "+subj); perr != nil {
				return perr
			}
			return fmt.Errorf("%w (is a watcher running? it creates the ROLLBACKS stream)", err)
		}
		fmt.Fprintln(e.stdout, req.ID)
		return nil
	}
}

// pinDeploy names in a manual request the release it rolls back: --version,
// or the newest deploy recorded on DEPLOYS. A request that only said
// "roll back" would roll back whatever is current when it runs, so running
// the command twice (or after an automatic rollback) would roll back the
// good release below the bad one; pinned, the repeat finds that release
// rolled back already and changes nothing. The deploy found also gives the
// hosts and the previous version it announced.
func pinDeploy(ctx context.Context, js jetstream.JetStream, req *events.RollbackRequest) error {
	q := deploys.Query{Environment: req.Environment, Service: req.Service}
	if req.Version != "" {
		want := req.Version
		q.Match = func(d events.Deploy) bool { return d.Version == want }
		q.Limit = 1000
	}
	found, err := deploys.Find(ctx, js, q)
	switch {
	case err == nil:
	case req.Version != "" && errors.Is(err, deploys.ErrNotFound):
		// Deployed without an event: the version alone says enough; the
		// hosts come from the policy.
		return nil
	case req.Version != "" && errors.Is(err, deploys.ErrTooFar):
		// It may have been announced with hosts: rolling back without
		// them would roll back the watcher's own filesystem instead.
		return &exitError{code: 1, err: fmt.Errorf("no deploy of %s version %s among the newest %d messages on %s for %s, so the hosts it went to are unknown: list them in the policy's rollback.hosts, or publish the deploy again",
			req.Service, req.Version, q.Limit, bus.DeploysStream, req.Environment)}
	case errors.Is(err, deploys.ErrNotFound), errors.Is(err, deploys.ErrTooFar):
		return &exitError{code: 1, err: fmt.Errorf("no deploy of %s in %s is recorded on %s, so which release to roll back is unknown: name it with --version (the release directory's name)",
			req.Service, req.Environment, bus.DeploysStream)}
	default:
		return fmt.Errorf("reading the deploys of %s in %s: %w", req.Service, req.Environment, err)
	}
	rollbackreq.Pin(req, found.Deploy, found.Seq)
	return nil
}

func addHistory(app *kingpin.Application, cmds map[string]func(context.Context, *env) error) {
	cmd := app.Command("history", "Print the audit trail.")
	f := addClientFlags(cmd)
	var flt audit.Filter
	var asJSON bool
	cmd.Flag("service", "Only this service.").StringVar(&flt.Service)
	cmd.Flag("environment", "Only this environment.").StringVar(&flt.Environment)
	cmd.Flag("run", "Only this run.").StringVar(&flt.RunID)
	cmd.Flag("kind", "Only records of this kind, or glob of kinds (run.failed, rollback.*); repeatable.").StringsVar(&flt.Kinds)
	cmd.Flag("limit", "Newest N records (0: all).").Default("100").SetValue(intFlag{"limit", &flt.Limit})
	cmd.Flag("json", "One JSON record per line, for scripts.").BoolVar(&asJSON)
	var follow bool
	cmd.Flag("follow", "Keep printing new records as they are written, until interrupted (like tail -f).").Short('f').BoolVar(&follow)
	cmds["history"] = func(ctx context.Context, e *env) error {
		if err := flt.ValidKinds(); err != nil {
			return &exitError{code: 2, err: err}
		}
		ctx, js, closeNC, err := f.connect(ctx, e, "watcher history")
		if err != nil {
			return err
		}
		defer closeNC()
		if follow {
			enc := json.NewEncoder(e.stdout)
			if !asJSON {
				fmt.Fprintf(e.stdout, "%-19s  %-18s  %-12s  %-12s  %-14s  %-26s  %s\n", "TIME", "KIND", "SERVICE", "ENVIRONMENT", "VERSION", "RUN", "MESSAGE")
			}
			return audit.Follow(ctx, js, flt, func(r audit.Record) error {
				if asJSON {
					return enc.Encode(r)
				}
				_, err := fmt.Fprintf(e.stdout, "%-19s  %-18s  %-12s  %-12s  %-14s  %-26s  %s\n", r.Time.Local().Format("2006-01-02 15:04:05"), r.Kind,
					dash(r.Service), dash(r.Environment), dash(r.Version), dash(r.RunID), oneLine(r.Message))
				return err
			})
		}
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		recs, err := audit.Read(rctx, js, flt)
		if err != nil {
			if perr := permissionErr(ctx, "reading the audit trail"); perr != nil {
				return perr
			}
			return err
		}
		if asJSON {
			enc := json.NewEncoder(e.stdout)
			for _, r := range recs {
				if err := enc.Encode(r); err != nil {
					return err
				}
			}
			return nil
		}
		if flt.RunID != "" {
			return runTable(e.stdout, flt.RunID, recs)
		}
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "TIME\tKIND\tSERVICE\tENVIRONMENT\tVERSION\tRUN\tMESSAGE")
		for _, r := range recs {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Time.Local().Format("2006-01-02 15:04:05"), r.Kind,
				dash(r.Service), dash(r.Environment), dash(r.Version), dash(r.RunID), oneLine(r.Message))
		}
		return tw.Flush()
	}
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// oneLine keeps a table row on one line whatever a message holds.
func oneLine(s string) string {
	return strings.Join(strings.Fields(s), " ")
}

func addActivate(app *kingpin.Application, cmds map[string]func(context.Context, *env) error) {
	cmd := app.Command("activate", "Deploy primitive: switch a link to a release atomically and record the release it replaces in previousVersion.")
	var link, release string
	var hosts []string
	cmd.Flag("link", "The current link, e.g. /srv/shop/current.").Required().StringVar(&link)
	cmd.Flag("release", "The release directory to activate.").Required().StringVar(&release)
	cmd.Flag("host", "Host to activate on over SSH (host or host:port; default: this machine); repeatable.").StringsVar(&hosts)
	sshCfg := addSSHFlags(cmd)
	cmds["activate"] = func(ctx context.Context, e *env) error {
		if !filepath.IsAbs(link) || !filepath.IsAbs(release) || filepath.Clean(link) != link || filepath.Clean(release) != release {
			return usageErr("--link and --release must be absolute, clean paths")
		}
		if err := (events.Deploy{ID: "activate", Service: "s", Environment: "e", Version: "v", Hosts: hosts}).Validate(); err != nil {
			return usageErr("%v", err)
		}
		type target struct {
			name string
			t    rollback.Target
		}
		targets := []target{{"local", rollback.Local{}}}
		if len(hosts) > 0 {
			pool := rollback.NewSSHPool(len(hosts))
			defer pool.Close()
			targets = targets[:0]
			for _, h := range hosts {
				t, err := pool.Dial(ctx, h, *sshCfg)
				if err != nil {
					return fmt.Errorf("host %s: %w", h, err)
				}
				targets = append(targets, target{t.Name(), t})
			}
		}
		failed := 0
		for _, t := range targets {
			prev, err := rollback.Activate(t.t, link, release)
			switch {
			case err != nil:
				failed++
				fmt.Fprintf(e.stdout, "%s: FAILED: %v\n", t.name, err)
			case prev == "":
				fmt.Fprintf(e.stdout, "%s: %s -> %s\n", t.name, link, release)
			default:
				fmt.Fprintf(e.stdout, "%s: %s -> %s (previous: %s)\n", t.name, link, release, prev)
			}
		}
		if failed > 0 {
			return fmt.Errorf("activation failed on %d of %d hosts", failed, len(targets))
		}
		return nil
	}
}

// addSSHFlags are the --ssh.* flags of the commands that reach hosts
// without a policy. There is no password flag: keys and the agent only.
func addSSHFlags(cmd *kingpin.CmdClause) *policy.SSH {
	c := &policy.SSH{ConnectTimeout: policy.DefaultSSHConnectTimeout, CommandTimeout: policy.DefaultSSHCommandTimeout}
	cmd.Flag("ssh.user", "SSH user (default: the current user).").StringVar(&c.User)
	cmd.Flag("ssh.port", "SSH port when a host gives none.").Default("22").IntVar(&c.Port)
	cmd.Flag("ssh.identity-file", "Private key file (unencrypted; otherwise use the agent via SSH_AUTH_SOCK).").StringVar(&c.IdentityFile)
	cmd.Flag("ssh.known-hosts", "known_hosts file that host keys are verified against.").Default("~/.ssh/known_hosts").StringVar(&c.KnownHosts)
	cmd.Flag("ssh.connect-timeout", "Connection timeout.").Default("10s").SetValue(&c.ConnectTimeout)
	return c
}

// publishHint says what a failed publish of a deploy event most likely
// means, and what to do.
func publishHint(err error, id string) string {
	var apiErr *jetstream.APIError
	switch {
	case errors.Is(err, jetstream.ErrNoStreamResponse), errors.Is(err, nats.ErrNoResponders), errors.Is(err, jetstream.ErrStreamNotFound):
		return "is a watcher running? it creates the DEPLOYS stream"
	case errors.As(err, &apiErr) && strings.Contains(strings.ToLower(apiErr.Description), "resources"):
		return "the JetStream storage limit is reached: free or grant storage, then publish again with --id=" + id
	case errors.Is(err, context.DeadlineExceeded):
		return "no acknowledgement within 10s: the server may be unable to store (disk full?); publish again with --id=" + id + ", which cannot start a second run"
	}
	return "publish again with --id=" + id + ", which cannot start a second run"
}
