// Package metrics queries Prometheus for the values a validation run judges.
package metrics

import (
	"context"
	"fmt"
	"net/url"
	"time"

	"github.com/prometheus/client_golang/api"
	v1 "github.com/prometheus/client_golang/api/prometheus/v1"
	"github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
)

// Options says how to reach Prometheus. HTTPClientConfig carries auth
// (basic_auth, authorization, oauth2) and TLS the way every Prometheus-family
// tool configures them.
type Options struct {
	URL     string                  `yaml:"url"`
	Timeout model.Duration          `yaml:"timeout"`
	HTTP    config.HTTPClientConfig `yaml:"http_client"`
}

// DefaultTimeout bounds one instant query.
var DefaultTimeout = model.Duration(10 * time.Second)

// Client runs instant queries.
type Client struct {
	api     v1.API
	timeout time.Duration
}

// New builds a client. It does not contact Prometheus.
func New(o Options) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("prometheus URL %q: want http(s)://host:port", o.URL)
	}
	if err := o.HTTP.Validate(); err != nil {
		return nil, fmt.Errorf("prometheus http_client: %w", err)
	}
	rt, err := config.NewRoundTripperFromConfig(o.HTTP, "rollback-watcher")
	if err != nil {
		return nil, fmt.Errorf("prometheus http_client: %w", err)
	}
	c, err := api.NewClient(api.Config{Address: o.URL, RoundTripper: rt})
	if err != nil {
		return nil, fmt.Errorf("prometheus client: %w", err)
	}
	timeout := time.Duration(o.Timeout)
	if timeout <= 0 {
		timeout = time.Duration(DefaultTimeout)
	}
	return &Client{api: v1.NewAPI(c), timeout: timeout}, nil
}

// Query evaluates an instant query at ts. A scalar result is returned as a
// one-sample vector without labels; a matrix or string is an error, since a
// threshold can only judge numbers.
func (c *Client) Query(ctx context.Context, query string, ts time.Time) (model.Vector, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	v, _, _, err := c.api.Query(ctx, query, ts, v1.WithTimeout(c.timeout))
	if err != nil {
		return nil, err
	}
	switch r := v.(type) {
	case model.Vector:
		return r, nil
	case *model.Scalar:
		return model.Vector{{Metric: model.Metric{}, Value: r.Value, Timestamp: r.Timestamp}}, nil
	default:
		return nil, fmt.Errorf("query returned a %s, want an instant vector or scalar", v.Type())
	}
}
