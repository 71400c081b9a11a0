// Command watcher validates deploys against business metrics and rolls back
// the bad ones. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"

	"github.com/alecthomas/kingpin/v2"
	"github.com/prometheus/common/promslog"
	promslogflag "github.com/prometheus/common/promslog/flag"
	"github.com/prometheus/common/version"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	reload := make(chan struct{}, 1)
	go func() {
		for range hup {
			select {
			case reload <- struct{}{}:
			default:
			}
		}
	}()
	os.Exit(run(ctx, os.Args[1:], os.Stdout, os.Stderr, reload))
}

// exitError carries an exit code with the one line to print.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

// usageErr is exit code 2: the command line itself is wrong.
func usageErr(format string, a ...any) error {
	return &exitError{code: 2, err: fmt.Errorf(format, a...)}
}

// env is what every command gets: where to write and how to log.
type env struct {
	stdout, stderr io.Writer
	logger         *slog.Logger
	reload         <-chan struct{}
	// secrets hides the passwords and tokens of the URLs the command was
	// given from all it prints, stdout and stderr (the log) alike.
	secrets *secrets
}

// run parses args and runs one command; main keeps the process-wide parts
// (signals, exit) so that everything here can run inside tests.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, reload <-chan struct{}) (code int) {
	sec := &secrets{}
	stdout, stderr = sec.writer(stdout), sec.writer(stderr)
	defer func() {
		// A panic is a bug, but a failing command prints one clear line
		// (README, "Commands"), never a stack trace: say what happened and
		// how to report it.
		if r := recover(); r != nil {
			fmt.Fprintf(stderr, "watcher: internal error: %v (please report this with the command you ran)\n", r)
			code = 3
		}
	}()
	app := kingpin.New("watcher", "Rollback Watcher: validates each deploy against business metrics in Prometheus and rolls back the bad ones. "+
		"--version (before any command) or `watcher version` prints the build.")
	app.UsageWriter(stdout)
	app.ErrorWriter(stderr)
	app.HelpFlag.Short('h')
	var logCfg promslog.Config
	logCfg.Writer = stderr
	promslogflag.AddFlags(app, &logCfg)

	cmds := map[string]func(context.Context, *env) error{}
	addRun(app, cmds)
	addCheck(app, cmds)
	addPublish(app, cmds)
	addRollback(app, cmds)
	addDecide(app, cmds)
	addHistory(app, cmds)
	addActivate(app, cmds)
	addDrill(app, cmds)
	addBacktest(app, cmds)
	app.Command("version", "Print version and build information.")
	cmds["version"] = func(_ context.Context, e *env) error {
		fmt.Fprintln(e.stdout, version.Print("watcher"))
		return nil
	}

	args = bareWait(args)
	if topLevelVersion(app, args) {
		fmt.Fprintln(stdout, version.Print("watcher"))
		return 0
	}
	name, exited, err := parse(app, args)
	if exited {
		return 0 // --help or --version printed what was asked
	}
	if errors.Is(err, kingpin.ErrCommandNotSpecified) {
		fmt.Fprintf(stderr, "watcher: error: no command given; usage: watcher [<flags>] <command> [<args> ...] with a command among %s; try --help\n",
			strings.Join(commandNames(app), ", "))
		return 2
	}
	if err != nil {
		fmt.Fprintf(stderr, "watcher: error: %s; try --help\n", errLine(err))
		return 2
	}
	e := &env{stdout: stdout, stderr: stderr, logger: promslog.New(&logCfg), reload: reload, secrets: sec}
	if err := cmds[name](ctx, e); err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			if ee.err != nil && ee.err.Error() != "" {
				fmt.Fprintf(stderr, "watcher %s: %s\n", name, errLine(ee.err))
			}
			return ee.code
		}
		fmt.Fprintf(stderr, "watcher %s: %s\n", name, errLine(err))
		return 1
	}
	return 0
}

// kingpinExit is how parse stops kingpin where it would call os.Exit.
type kingpinExit struct{}

// parse runs kingpin without letting it exit the process: once it has
// printed the help or the version, it stops there (exited) instead of going
// on to also print the usage again for the missing command. A missing
// command is ErrCommandNotSpecified, for the caller's one line.
func parse(app *kingpin.Application, args []string) (name string, exited bool, err error) {
	if pc, err := app.ParseContext(args); err == nil && pc.SelectedCommand == nil && !asksForHelp(app, pc) {
		return "", false, kingpin.ErrCommandNotSpecified
	}
	app.Terminate(func(int) { panic(kingpinExit{}) })
	defer func() {
		if r := recover(); r != nil {
			if _, ok := r.(kingpinExit); !ok {
				panic(r)
			}
			exited = true
		}
	}()
	name, err = app.Parse(args)
	return name, false, err
}

func asksForHelp(app *kingpin.Application, pc *kingpin.ParseContext) bool {
	for _, el := range pc.Elements {
		if f, ok := el.Clause.(*kingpin.FlagClause); ok && f == app.HelpFlag {
			return true
		}
	}
	return false
}

// topLevelVersion says whether --version comes before any command, like
// the Prometheus tools' flag. It cannot be a kingpin flag of the
// application: kingpin refuses a command flag of the same name, and
// `publish --version` (the deployed version) and `check --version` (the one
// templates see) are that. So the arguments before the command are read
// here: the application's flags, with the value of those that take one.
func topLevelVersion(app *kingpin.Application, args []string) bool {
	takesValue := map[string]bool{}
	for _, f := range app.Model().Flags {
		takesValue["--"+f.Name] = !f.IsBoolFlag()
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch {
		case a == "--version":
			return true
		case a == "--" || !strings.HasPrefix(a, "-"):
			return false // the command, or positional arguments
		case takesValue[a]:
			i++ // --log.level debug: skip the value
		}
	}
	return false
}

func commandNames(app *kingpin.Application) []string {
	var names []string
	for _, c := range app.Model().Commands {
		if !c.Hidden && c.Name != "help" {
			names = append(names, c.Name)
		}
	}
	return names
}

// errLine keeps an error on the one stderr line the README promises: the
// lines of a multi-line error (a policy LoadError has one per problem) are
// joined with "; ".
func errLine(err error) string {
	return strings.Join(strings.Split(strings.TrimSpace(err.Error()), "\n"), "; ")
}

// intFlag is an integer flag whose parse error names the flag (kingpin's
// own says only `strconv.ParseFloat: parsing "abc"`). Negative values are
// refused: no integer flag here has a meaning for them.
type intFlag struct {
	name string
	p    *int
}

func (f intFlag) Set(s string) error {
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 {
		return fmt.Errorf("--%s=%q: want a whole number, 0 or more", f.name, s)
	}
	*f.p = n
	return nil
}

func (f intFlag) String() string { return strconv.Itoa(*f.p) }
