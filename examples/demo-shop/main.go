// Command demo-shop is a pretend shop for the quick start: it sells at the
// rate its current release says (the orders_per_minute file in the release
// the link points at) and exports shop_orders_total for Prometheus. A bad
// release sells little; rolling the link back restores the rate, so the
// quick start shows the whole loop on real parts.
package main

import (
	"flag"
	"log"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:9100", "address for /metrics")
	link := flag.String("link", "/tmp/rollback-watcher-demo/current", "the current release link")
	service := flag.String("service", "demo-shop", "service label")
	flag.Parse()

	reg := prometheus.NewRegistry()
	orders := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "shop_orders_total", Help: "Orders taken.",
	}, []string{"service", "version"})
	reg.MustRegister(orders)

	go func() {
		for range time.Tick(time.Second) {
			rate, version := current(*link)
			orders.WithLabelValues(*service, version).Add(rate / 60)
		}
	}()
	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	log.Printf("demo-shop: selling at the rate of %s, metrics on http://%s/metrics", *link, *listen)
	log.Fatal(http.ListenAndServe(*listen, nil))
}

// current reads the rate of the release the link points at, read afresh
// every second as a real process would after a reload.
func current(link string) (float64, string) {
	target, err := filepath.EvalSymlinks(link)
	if err != nil {
		return 0, "none"
	}
	b, err := os.ReadFile(filepath.Join(target, "orders_per_minute"))
	if err != nil {
		return 0, filepath.Base(target)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
	if err != nil {
		return 0, filepath.Base(target)
	}
	return v, filepath.Base(target)
}
