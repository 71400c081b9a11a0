package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/alecthomas/kingpin/v2"

	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/backtest"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/promclient"
)

// backtestOptions is what `watcher backtest` is told.
type backtestOptions struct {
	conn           clientFlags
	deploys        string
	from, to       string
	expect         []string
	asJSON         bool
	failOnMistakes bool
}

func addBacktest(app *kingpin.Application, cmds map[string]func(context.Context, *env) error) {
	cmd := app.Command("backtest", "Replay the policies over past deploys against Prometheus's history, with the judging code of `watcher run`, "+
		"and print what each deploy would have got; with expectations, the false rollbacks, misses, precision and recall.")
	var o backtestOptions
	f := &o.conn.configFlags
	cmd.Flag("config.file", "Configuration file (rule files; Prometheus auth and TLS; NATS credentials for --from/--to).").StringVar(&f.file)
	cmd.Flag("rules", "Policy files or globs; repeatable. Default: the config file's rule_files, else "+DefaultRules+".").StringsVar(&f.rules)
	cmd.Flag("prometheus.url", "Prometheus holding the history to replay against (required unless --config.file names one); auth and TLS go in --config.file.").
		IsSetByUser(&f.promSet).StringVar(&f.promURL)
	cmd.Flag("deploys", `File of deploys: one native JSON deploy event per line, with its "time" and optionally "expect": "good" or "bad" ("-": standard input).`).
		PlaceHolder("FILE").StringVar(&o.deploys)
	cmd.Flag("from", "With --to: replay the deploys the watcher saw from this time (RFC 3339), read from its AUDIT stream.").PlaceHolder("T").StringVar(&o.from)
	cmd.Flag("to", "With --from: up to this time (RFC 3339), excluded.").PlaceHolder("T").StringVar(&o.to)
	addNATSURL(cmd, f, defaultNATSURL)
	cmd.Flag("expect", "DEPLOY_ID=good or DEPLOY_ID=bad: what a deploy should have got, over the file's or what the watcher did; repeatable.").
		PlaceHolder("ID=good|bad").StringsVar(&o.expect)
	cmd.Flag("json", "One JSON object per deploy, then one summary object, for scripts.").BoolVar(&o.asJSON)
	cmd.Flag("fail-on-mistakes", "Exit 1 when a false rollback or a miss is found (for CI gating of policy changes).").BoolVar(&o.failOnMistakes)
	cmds["backtest"] = func(ctx context.Context, e *env) error { return o.run(ctx, e) }
}

func (o *backtestOptions) run(ctx context.Context, e *env) error {
	f := &o.conn.configFlags
	var from, to time.Time
	switch {
	case o.deploys != "" && (o.from != "" || o.to != ""):
		return usageErr("give either --deploys=FILE or --from and --to, not both")
	case o.deploys == "" && o.from == "" && o.to == "":
		return usageErr("no deploys to replay: give --deploys=FILE, or --from=T --to=T to read them from the audit")
	case o.deploys == "":
		var err error
		if from, err = flagTime("from", o.from); err != nil {
			return err
		}
		if to, err = flagTime("to", o.to); err != nil {
			return err
		}
		if !from.Before(to) {
			return usageErr("--from=%s is not before --to=%s", o.from, o.to)
		}
	}
	cfg, err := e.load(f)
	if err != nil {
		return &exitError{code: 2, err: err}
	}
	if cfg.Prometheus.URL == "" {
		return usageErr("--prometheus.url is required: the Prometheus whose history the deploys are replayed against")
	}
	prom, err := promclient.New(cfg.Prometheus)
	if err != nil {
		return usageErr("%v", err)
	}
	set, err := policy.Load(cfg.RuleFiles...)
	if err != nil {
		return fmt.Errorf("policies are invalid (`watcher check` lists every problem): %w", err)
	}

	var deploys []backtest.Deploy
	if o.deploys != "" {
		deploys, err = readDeploys(o.deploys)
	} else {
		deploys, err = o.auditDeploys(ctx, e, from, to)
	}
	if err != nil {
		return err
	}
	if err := backtest.Override(deploys, o.expect); err != nil {
		return usageErr("--expect %v", err)
	}
	// A Prometheus that does not answer would make every measurement an
	// error and every verdict inconclusive: a table of nonsense.
	pctx, cancel := context.WithTimeout(ctx, prom.Timeout())
	_, err = prom.Query(pctx, "vector(1)", time.Now())
	cancel()
	if err != nil {
		return fmt.Errorf("no answer from Prometheus %s: %w", redactURLs(cfg.Prometheus.URL), err)
	}

	results, stats, err := backtest.Run(ctx, backtest.Options{Policies: set, Querier: prom, Timeout: prom.Timeout(), Now: time.Now()}, deploys)
	if err != nil {
		return err
	}
	e.logger.Debug("backtest done", "deploys", len(results), "queries", stats.Asked, "requests", stats.Requests)
	if o.asJSON {
		if err := backtest.WriteJSON(e.stdout, results); err != nil {
			return err
		}
		if o.deploys == "" {
			fmt.Fprintln(e.stderr, "watcher backtest: expectations are what the watcher did: a run it rolled back or failed is bad, one it passed is good")
		}
	} else if err := backtest.WriteTable(e.stdout, results); err != nil {
		return err
	}
	if s := backtest.Summarize(results); o.failOnMistakes && s.FalseRollbacks+s.Misses > 0 {
		return &exitError{code: 1, err: fmt.Errorf("--fail-on-mistakes: %d false rollbacks, %d misses", s.FalseRollbacks, s.Misses)}
	}
	return nil
}

func flagTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, usageErr("--%s is missing: --from and --to go together", name)
	}
	t, err := time.Parse(time.RFC3339, v)
	if err != nil {
		return time.Time{}, usageErr("--%s=%q: want an RFC 3339 time such as 2026-11-25T18:00:00Z", name, v)
	}
	return t, nil
}

func readDeploys(name string) ([]backtest.Deploy, error) {
	if name == "-" {
		return backtest.ReadFile(os.Stdin, "standard input")
	}
	fh, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer fh.Close()
	return backtest.ReadFile(fh, name)
}

// auditDeploys reads the deploys the watcher saw between from and to from
// its audit trail.
func (o *backtestOptions) auditDeploys(ctx context.Context, e *env, from, to time.Time) ([]backtest.Deploy, error) {
	cctx, js, closeNC, err := o.conn.connect(ctx, e, "watcher backtest")
	if err != nil {
		return nil, err
	}
	defer closeNC()
	rctx, cancel := context.WithTimeout(cctx, 2*time.Minute)
	defer cancel()
	recs, err := audit.Read(rctx, js, audit.Filter{})
	if err != nil {
		if perr := permissionErr(cctx, "reading the audit trail"); perr != nil {
			return nil, perr
		}
		return nil, err
	}
	ds := backtest.FromAudit(recs, from, to)
	if len(ds) == 0 {
		return nil, errors.New("no deploys in the audit between --from and --to (no run.started or run.skipped record)")
	}
	return ds, nil
}
