package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alecthomas/kingpin/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/common/version"
	toolkitweb "github.com/prometheus/exporter-toolkit/web"

	"github.com/rollback-watcher/watcher/internal/alerts"
	"github.com/rollback-watcher/watcher/internal/audit"
	"github.com/rollback-watcher/watcher/internal/bus"
	"github.com/rollback-watcher/watcher/internal/config"
	"github.com/rollback-watcher/watcher/internal/links"
	"github.com/rollback-watcher/watcher/internal/notify"
	"github.com/rollback-watcher/watcher/internal/policy"
	"github.com/rollback-watcher/watcher/internal/promclient"
	"github.com/rollback-watcher/watcher/internal/rollback"
	"github.com/rollback-watcher/watcher/internal/watch"
	"github.com/rollback-watcher/watcher/internal/web"
)

// DefaultRules is where policies are read from when neither --rules nor the
// config file says.
const DefaultRules = "rules/*.yml"

type configFlags struct {
	file     string
	rules    []string
	natsURL  string
	natsSet  bool
	promURL  string
	promSet  bool
	replicas int
}

// load reads --config.file (if any) and applies the flags over it.
func (f *configFlags) load() (*config.Config, error) {
	c := &config.Config{}
	if f.file != "" {
		var err error
		if c, err = config.Load(f.file); err != nil {
			return nil, err
		}
	}
	if len(f.rules) > 0 {
		c.RuleFiles = f.rules
	}
	if len(c.RuleFiles) == 0 {
		c.RuleFiles = []string{DefaultRules}
	}
	if f.natsSet || c.NATS.URL == "" {
		c.NATS.URL = f.natsURL
	}
	if f.promSet || c.Prometheus.URL == "" {
		c.Prometheus.URL = f.promURL
	}
	if f.replicas > 0 {
		c.NATS.Replicas = f.replicas
	}
	return c, nil
}

func addNATSURL(cmd *kingpin.CmdClause, f *configFlags, def string) {
	cmd.Flag("nats.url", "NATS server URL(s), comma-separated. Credentials and TLS go in --config.file, never in flags.").
		Default(def).IsSetByUser(&f.natsSet).StringVar(&f.natsURL)
}

func addRun(app *kingpin.Application, cmds map[string]func(context.Context, *env) error) {
	cmd := app.Command("run", "Run the watcher: consume deploy events, validate them, execute rollbacks.")
	var o runOptions
	f := &o.config
	cmd.Flag("config.file", "Configuration file (rule files, Prometheus and NATS connection, credentials).").StringVar(&f.file)
	cmd.Flag("rules", "Policy files or globs; repeatable. Default: the config file's rule_files, else "+DefaultRules+".").StringsVar(&f.rules)
	addNATSURL(cmd, f, "")
	cmd.Flag("nats.listen", "Address of the embedded NATS server, used when --nats.url is not set.").Default("127.0.0.1:4222").StringVar(&o.listen)
	cmd.Flag("nats.replicas", "Replication factor of the streams the watcher creates (NATS cluster).").Default("0").SetValue(intFlag{"nats.replicas", &f.replicas})
	cmd.Flag("storage.path", "Directory for the embedded NATS server's JetStream data.").Default("data").StringVar(&o.storage)
	cmd.Flag("prometheus.url", "Prometheus to query; auth and TLS go in --config.file.").Default("http://127.0.0.1:9090").IsSetByUser(&f.promSet).StringVar(&f.promURL)
	cmd.Flag("web.listen-address", "Address for /metrics, health, reload and the API.").Default("127.0.0.1:9797").StringVar(&o.webAddr)
	cmd.Flag("dry-run", "Evaluate and publish everything, execute no rollback (the audit says so).").BoolVar(&o.dryRun)
	cmd.Flag("web.external-url", "The URL under which the watcher is reached (a proxy in front of it); its host is accepted on state-changing requests.").StringVar(&o.externalURL)
	cmd.Flag("web.config.file", "Exporter-toolkit web configuration (TLS, basic auth) for the HTTP endpoints, POST /api/v1/alerts included.").
		Default("").StringVar(&o.webConfig)
	cmd.Flag("runs.replica", "Name of this watcher among the replicas sharing one NATS. Default: host name and a random suffix.").StringVar(&o.replica)
	cmd.Flag("runs.lease", "How long a replica's runs and rollbacks stay its own after its last heartbeat; then another replica takes them over.").
		Default(watch.DefaultLease.String()).DurationVar(&o.lease)
	// Not the method value o.Run: it would copy o before the flags are parsed.
	cmds["run"] = func(ctx context.Context, e *env) error { return o.Run(ctx, e) }
}

// runOptions is what `watcher run` is told: its command line, and through
// it the configuration file. Run starts the watcher with them; tests build
// one and call Run.
type runOptions struct {
	config configFlags
	// listen and storage are the embedded NATS server's address and
	// JetStream directory (when config names no NATS URL); webAddr is the
	// HTTP listen address.
	listen, storage, webAddr string
	dryRun                   bool
	// replica names this process among the replicas sharing one NATS;
	// lease is how long its runs stay its own after its last heartbeat.
	replica string
	lease   time.Duration
	// webConfig is --web.config.file (TLS, basic auth); externalURL is
	// --web.external-url.
	webConfig, externalURL string
}

// Run runs the watcher until ctx ends.
func (o runOptions) Run(ctx context.Context, e *env) error {
	f := &o.config
	logger := e.logger
	if o.webConfig != "" {
		if err := toolkitweb.Validate(o.webConfig); err != nil {
			return fmt.Errorf("--web.config.file %s: %w", o.webConfig, err)
		}
	}
	if o.replica == "" {
		o.replica = watch.DefaultReplica()
	}
	if err := watch.ValidReplica(o.replica); err != nil {
		return usageErr("--runs.replica: %v", err)
	}
	if o.lease < time.Second {
		return usageErr("--runs.lease=%s: at least 1s (heartbeats go out every third of it)", o.lease)
	}
	cfg, err := e.load(f)
	if err != nil {
		return err
	}
	// Bad addresses are usage errors, reported before anything starts.
	if cfg.NATS.URL != "" && cfg.NATS.Server.Enabled() {
		// Ignoring it would leave the external server as open as it was.
		return usageErr("--config.file %s: nats.server secures the embedded server, which does not run with --nats.url: secure %s itself, or drop --nats.url", f.file, cfg.NATS.URL)
	}
	if cfg.NATS.URL == "" {
		if _, port, err := net.SplitHostPort(o.listen); err != nil {
			return usageErr("--nats.listen %q: %v", o.listen, err)
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			return usageErr("--nats.listen %q: bad port", o.listen)
		}
	}
	if o.externalURL != "" {
		if u, err := url.Parse(o.externalURL); err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
			return usageErr("--web.external-url %q: want an absolute http(s) URL such as https://watcher.example.com/", o.externalURL)
		}
	}
	if _, _, err := net.SplitHostPort(o.webAddr); err != nil {
		return usageErr("--web.listen-address %q: %v", o.webAddr, err)
	}
	// Read before anything starts: a missing secret file is a bad config.
	targets, err := notify.Targets(cfg.Notify)
	if err != nil {
		return err
	}
	ingestCreds, err := ingestCredentials(cfg.Ingest)
	if err != nil {
		return err
	}
	decisionCreds, err := decisionCredentials(cfg.Decisions)
	if err != nil {
		return err
	}
	set, err := policy.Load(cfg.RuleFiles...)
	if err != nil {
		return fmt.Errorf("policies are invalid (`watcher check` lists every problem): %w", err)
	}
	var policies atomic.Pointer[policy.Set]
	policies.Store(set)
	var w *watch.Watcher // set below; a reload tells its runs
	reload := func() error {
		s, err := policy.Load(cfg.RuleFiles...)
		if err != nil {
			logger.Error("reload failed; keeping the policies in force", "err", err)
			return err
		}
		policies.Store(s)
		logger.Info("policies reloaded", "policies", len(s.Policies), "files", len(s.Files))
		if w != nil {
			w.Reloaded(ctx, s)
		}
		return nil
	}
	prom, err := promclient.New(cfg.Prometheus)
	if err != nil {
		return err
	}
	promUp := newPromProbe(prom, redactURLs(cfg.Prometheus.URL), logger, e.secrets.scrubErr)

	var opts []nats.Option
	storageErr := func() error { return nil }
	var embedded *bus.Embedded // the status page shows its storage
	conn := cfg.NATS
	if cfg.NATS.URL == "" {
		unlock, err := lockStorage(o.storage)
		if err != nil {
			return err
		}
		defer unlock()
		srv, err := bus.StartEmbeddedWith(o.listen, o.storage, cfg.NATS.Server, logger)
		if err != nil {
			return err
		}
		defer srv.Stop()
		cfg.NATS.URL = srv.ClientURL()
		// The watcher reaches its own server in-process, as its internal
		// user: the client credentials in the file are for the commands.
		// In-process, TLS is neither needed nor offered ("tls://" would ask for it).
		conn = bus.Options{URL: strings.Replace(srv.ClientURL(), "tls://", "nats://", 1), Replicas: cfg.NATS.Replicas}
		opts = append(opts, srv.ClientOptions()...)
		storageErr, embedded = srv.StorageError, srv
		go func() {
			// A full disk stops JetStream's writes until it restarts:
			// restart it once there is room again.
			t := time.NewTicker(2 * time.Second)
			defer t.Stop()
			for {
				select {
				case <-ctx.Done():
					return
				case <-t.C:
				}
				if _, err := srv.Recover(); err != nil {
					logger.Error("JetStream not restarted after the storage failure", "err", err)
				}
			}
		}()
		logger.Info("embedded NATS server started", "url", srv.ClientURL(), "storage", o.storage, "security", srv.Security())
	}
	nc, err := bus.Connect(conn, "watcher run", opts...)
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return err
	}
	setupCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := bus.EnsureStreams(setupCtx, js, cfg.NATS.Replicas); err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}), versionCollector(), promUp.Collector())
	aud := &audit.Publisher{JS: js}
	host, _ := os.Hostname()
	// Connections to rollback hosts are opened while a deploy is in its
	// window and kept for its rollback; closed on return, after the
	// executor has stopped.
	sshPool := rollback.NewSSHPool(0)
	defer sshPool.Close()
	w = &watch.Watcher{JS: js, Policies: policies.Load, Querier: promUp, QueryTimeout: prom.Timeout(), Audit: aud, Logger: logger,
		Warmer:  &rollback.Warmer{Pool: sshPool, Logger: logger},
		Replica: o.replica, Lease: o.lease, Replicas: cfg.NATS.Replicas}
	// A request whose executor died comes back to another replica after
	// AckWait: a few leases, like its runs.
	x := &rollback.Executor{JS: js, Policies: policies.Load, Audit: aud, Logger: logger, DryRun: o.dryRun,
		Dial: sshPool.Dial, AnnounceSource: "rollback-watcher/" + host,
		Replica: o.replica, Replicas: cfg.NATS.Replicas, AckWait: 3 * o.lease}
	// Held rollbacks are decided over HTTP too; with an external URL,
	// rollback.held carries signed links (README "HTTP").
	decisions := &web.Decisions{JS: js, Audit: aud, WebConfigFile: o.webConfig, Credentials: decisionCreds, Logger: logger.With("component", "decisions")}
	for _, warning := range decisions.Warnings() {
		logger.Warn(warning, "component", "decisions")
	}
	if o.externalURL != "" {
		if decisions.Links, err = links.Open(setupCtx, js, cfg.NATS.Replicas, o.externalURL); err != nil {
			return err
		}
		x.Links = decisions.Links.Links
	}
	decisions.Register(reg)
	w.Register(reg)
	x.Register(reg)
	alertReceiver := &alerts.Receiver{JS: js, Policies: policies.Load, Audit: aud, Logger: logger}
	alertReceiver.Register(reg)
	ingest := &web.Ingest{JS: js, Audit: aud, Credentials: ingestCreds, Logger: logger.With("component", "ingest")}
	ingest.Register(reg)
	var notifier *notify.Notifier
	if len(targets) > 0 {
		notifier = &notify.Notifier{JS: js, Targets: targets, Audit: aud, Logger: logger, ExternalURL: o.externalURL, Replicas: cfg.NATS.Replicas}
		notifier.Register(reg)
	}

	runCtx, stop := context.WithCancel(ctx)
	defer stop()
	probeDone := make(chan struct{})
	go func() { promUp.Run(runCtx); close(probeDone) }()
	if err := w.Start(runCtx); err != nil {
		return err
	}
	if err := x.Start(runCtx); err != nil {
		return err
	}
	if notifier != nil {
		if err := notifier.Start(runCtx); err != nil {
			return err
		}
	}

	// The toolkit gets --web.config.file without basic_auth_users, which
	// the watcher asks for itself, route by route (README "HTTP"; see
	// internal/web/webconfig.go for why a derived file).
	var webCfg *web.WebConfig
	toolkitConfig := o.webConfig
	if o.webConfig != "" {
		dir, err := os.MkdirTemp("", "watcher-web-")
		if err != nil {
			return fmt.Errorf("--web.config.file %s: a directory for its TLS part: %w", o.webConfig, err)
		}
		defer os.RemoveAll(dir)
		if webCfg, err = web.NewWebConfig(o.webConfig, dir); err != nil {
			return err
		}
		toolkitConfig = webCfg.Derived()
		policyReload := reload
		reload = func() error {
			if _, err := webCfg.Users(); err != nil {
				logger.Error("--web.config.file cannot be read: TLS keeps its settings, every request gets 500 until the file is fixed", "err", err)
			}
			return policyReload()
		}
	}
	ln, err := net.Listen("tcp", o.webAddr)
	if err != nil {
		return fmt.Errorf("--web.listen-address %s: %w", o.webAddr, err)
	}
	srv := &http.Server{
		Handler: (&web.Server{
			Gatherer: reg, Reload: reload, Runs: w.Runs, Logger: logger,
			Page:   web.StreamPage{Watcher: w, JS: js, Prometheus: promUp.Down, Server: embedded},
			Alerts: alertReceiver.Handle, AlertsRefused: alertReceiver.Refused, AlertsRefusedQuiet: alertReceiver.CountRefused,
			Ingest: ingest, WebConfig: webCfg,
			// On loopback, POSTs must name a loopback Host or the external
			// URL's (DNS rebinding).
			ListenAddress: ln.Addr().String(), ExternalURL: o.externalURL,
			// Readiness ignores Prometheus: see "Prometheus unreachable" in README.md.
			Degraded: promUp.Degraded, Decisions: decisions,
			Ready: func() error {
				if nc.Status() != nats.CONNECTED {
					return fmt.Errorf("NATS connection is %s", nc.Status())
				}
				return storageErr()
			},
		}).Handler(),
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		noSystemd := false
		flags := &toolkitweb.FlagConfig{WebConfigFile: &toolkitConfig, WebListenAddresses: &[]string{o.webAddr}, WebSystemdSocket: &noSystemd}
		if err := toolkitweb.Serve(ln, srv, flags, logger.With("component", "web")); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Error("web server stopped", "err", err)
		}
	}()
	logger.Info("watcher running", "web", ln.Addr().String(), "nats", redactURLs(cfg.NATS.URL), "prometheus", redactURLs(cfg.Prometheus.URL),
		"policies", len(set.Policies), "dry_run", o.dryRun, "ingest", ingestCreds, "decisions", decisionCreds, "version", version.Version)

	for {
		select {
		case <-e.reload:
			_ = reload()
			continue
		case <-ctx.Done():
		}
		break
	}
	logger.Info("shutting down")
	shutCtx, cancelShut := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelShut()
	_ = srv.Shutdown(shutCtx)
	stop()
	w.Wait()
	x.Wait()
	if notifier != nil {
		notifier.Wait()
	}
	<-probeDone
	return nil
}

func versionCollector() prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "watcher_build_info",
		Help: "Build information of the running watcher.",
		ConstLabels: prometheus.Labels{
			"version": version.Version, "revision": version.Revision, "goversion": version.GoVersion,
		},
	}, func() float64 { return 1 })
}
