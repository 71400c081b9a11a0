// Package promclient queries Prometheus for the values a validation run judges.
package promclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alecthomas/units"
	"github.com/prometheus/common/config"
	"github.com/prometheus/common/model"
)

// Options says how to reach Prometheus. HTTPClientConfig carries auth
// (basic_auth, authorization, oauth2) and TLS the way every Prometheus-family
// tool configures them. MaxResponseBytes and MaxSeries bound one answer:
// the watcher judges a few numbers, and one unbounded answer (a query that
// matched every series) once took it from 33 MB to 7.8 GB.
type Options struct {
	URL              string                  `yaml:"url"`
	Timeout          model.Duration          `yaml:"timeout"`
	MaxResponseBytes units.Base2Bytes        `yaml:"max_response_bytes"`
	MaxSeries        int                     `yaml:"max_series"`
	HTTP             config.HTTPClientConfig `yaml:"http_client"`
}

// DefaultTimeout bounds one instant query.
var DefaultTimeout = model.Duration(10 * time.Second)

// DefaultMaxSeries is ten times what a check judging one series per
// instance of a large service needs; what an answer holds in memory is
// about this many series, whatever its size on the wire.
var DefaultMaxSeries = 10000

// DefaultMaxResponseBytes lets DefaultMaxSeries series with a dozen
// labels each through (Prometheus writes about 300 to 800 bytes for one),
// and stops an answer that is mostly something else (a huge label) before
// the decoder has to hold it.
var DefaultMaxResponseBytes = 8 * units.MiB

// Client runs instant and range queries.
type Client struct {
	http      *http.Client
	endpoint  string // /api/v1/query
	rangeURL  string // /api/v1/query_range
	timeout   time.Duration
	maxBytes  int64
	maxSeries int
	// useGET is set once Prometheus (or a proxy in front of it) answered
	// a POST with 405 or 501: it takes only GET, and asking with POST
	// first every time would double every query.
	useGET atomic.Bool
}

// New builds a client. It does not contact Prometheus.
func New(o Options) (*Client, error) {
	u, err := url.Parse(o.URL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("prometheus URL %q: want http(s)://host:port", o.URL)
	}
	if o.MaxResponseBytes < 0 {
		return nil, fmt.Errorf("prometheus max_response_bytes %s: want a positive size such as 8MiB", o.MaxResponseBytes)
	}
	if o.MaxSeries < 0 {
		return nil, fmt.Errorf("prometheus max_series %d: want a positive number", o.MaxSeries)
	}
	if err := o.HTTP.Validate(); err != nil {
		return nil, fmt.Errorf("prometheus http_client: %w", err)
	}
	rt, err := config.NewRoundTripperFromConfig(o.HTTP, "rollback-watcher")
	if err != nil {
		return nil, fmt.Errorf("prometheus http_client: %w", err)
	}
	base := u.Path
	u.Path = path.Join(base, "/api/v1/query")
	endpoint := u.String()
	u.Path = path.Join(base, "/api/v1/query_range")
	c := &Client{
		http:      &http.Client{Transport: rt},
		endpoint:  endpoint,
		rangeURL:  u.String(),
		timeout:   time.Duration(o.Timeout),
		maxBytes:  int64(o.MaxResponseBytes),
		maxSeries: o.MaxSeries,
	}
	if c.timeout <= 0 {
		c.timeout = time.Duration(DefaultTimeout)
	}
	if c.maxBytes == 0 {
		c.maxBytes = int64(DefaultMaxResponseBytes)
	}
	if c.maxSeries == 0 {
		c.maxSeries = DefaultMaxSeries
	}
	return c, nil
}

// Timeout is how long one query may take at most; a caller's context with
// an earlier deadline shortens it.
func (c *Client) Timeout() time.Duration { return c.timeout }

// LimitError is an answer cut off at one of the client's limits. Its text
// names the limit and the configuration key that raises it.
type LimitError struct {
	Series bool  // the series limit, else the byte limit
	Limit  int64 // series or bytes
}

func (e *LimitError) Error() string {
	if e.Series {
		return fmt.Sprintf("answer has more than %d series, the limit (prometheus.max_series); aggregate in the query (sum by, topk) or raise the limit", e.Limit)
	}
	return fmt.Sprintf("answer larger than %s, the limit (prometheus.max_response_bytes); narrow the query or raise the limit", units.Base2Bytes(e.Limit))
}

// Query evaluates an instant query at ts. A scalar result is returned as a
// one-sample vector without labels; a matrix or string is an error, since a
// threshold can only judge numbers.
//
// The answer is decoded as it streams in, one series at a time, and cut
// off past MaxSeries series or MaxResponseBytes bytes: what a query can
// cost the process is bounded by the limits, not by what the query matched.
func (c *Client) Query(ctx context.Context, query string, ts time.Time) (model.Vector, error) {
	a, err := c.ask(ctx, c.endpoint, url.Values{"query": {query}, "time": {unixSeconds(ts)}}, resultVector)
	return a.vector, err
}

// QueryRange evaluates a range query from start to end every step: the
// samples a comparison judges. Each series is a model.SampleStream; the
// limits bound it as they bound an instant query (the byte limit also
// bounds the number of samples, about 25 bytes each on the wire).
func (c *Client) QueryRange(ctx context.Context, query string, start, end time.Time, step time.Duration) (model.Matrix, error) {
	if step <= 0 || end.Before(start) {
		return nil, fmt.Errorf("range query from %s to %s every %s: want start <= end and a positive step", start.Format(time.RFC3339), end.Format(time.RFC3339), step)
	}
	form := url.Values{
		"query": {query},
		"start": {unixSeconds(start)},
		"end":   {unixSeconds(end)},
		"step":  {strconv.FormatFloat(step.Seconds(), 'f', -1, 64)},
	}
	a, err := c.ask(ctx, c.rangeURL, form, resultMatrix)
	return a.matrix, err
}

func unixSeconds(t time.Time) string {
	return strconv.FormatFloat(float64(t.UnixNano())/1e9, 'f', -1, 64)
}

// Result types a caller accepts.
const (
	resultVector = "vector" // an instant vector, or a scalar as a one-sample vector
	resultMatrix = "matrix"
)

// answer is a decoded result: a vector or a matrix, as asked.
type answer struct {
	vector model.Vector
	matrix model.Matrix
}

// ask sends form to endpoint within the client's timeout and decodes the
// answer, which must be of type want.
func (c *Client) ask(ctx context.Context, endpoint string, form url.Values, want string) (answer, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	// Prometheus stops evaluating when the client has stopped waiting.
	timeout := c.timeout
	if dl, ok := ctx.Deadline(); ok {
		timeout = min(timeout, time.Until(dl))
	}
	form.Set("timeout", strconv.FormatFloat(max(timeout, time.Millisecond).Seconds(), 'f', 3, 64))
	resp, err := c.send(ctx, endpoint, form)
	if err != nil {
		return answer{}, err
	}
	body := &limitedBody{r: resp.Body, left: c.maxBytes, limit: c.maxBytes}
	a, err := decodeAnswer(json.NewDecoder(body), c.maxSeries, want)
	var le *LimitError
	if errors.As(err, &le) {
		// Reading on to reuse the connection would read what the limit
		// is there to stop: close it.
		resp.Body.Close()
		return answer{}, err
	}
	closeBody(resp)
	switch {
	case resp.StatusCode/100 != 2 && (err == nil || !errors.As(err, new(*apiError))):
		// Not an API answer: a proxy's or web.config's refusal.
		return answer{}, fmt.Errorf("prometheus answered %s: %s", resp.Status, oneLine(body.head))
	case err != nil:
		return answer{}, err
	}
	return a, nil
}

// send asks Prometheus with POST, which takes queries of any length, and
// falls back to GET, as client_golang's API client does, when the answer
// is 405 Method Not Allowed or 501 Not Implemented: a proxy in front of
// Prometheus that lets only GET through.
func (c *Client) send(ctx context.Context, endpoint string, form url.Values) (*http.Response, error) {
	if !c.useGET.Load() {
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, endpoint, strings.NewReader(form.Encode()))
		if err != nil {
			return nil, err
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		resp, err := c.http.Do(req)
		if err != nil {
			return nil, err
		}
		if resp.StatusCode != http.StatusMethodNotAllowed && resp.StatusCode != http.StatusNotImplemented {
			return resp, nil
		}
		closeBody(resp)
		c.useGET.Store(true)
	}
	u := endpoint + "?" + form.Encode()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	return c.http.Do(req)
}

// drainBytes is how much of an answer's rest is read before closing it so
// that the connection is reused (the newline after Prometheus's JSON, a
// proxy's error page); past it, closing the connection is cheaper.
const drainBytes = 64 << 10

// closeBody reads at most drainBytes of what is left of resp's body and
// closes it.
func closeBody(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, drainBytes))
	resp.Body.Close()
}

// apiError is Prometheus's own error answer: {"status":"error",...}.
type apiError struct{ typ, msg string }

func (e *apiError) Error() string { return e.typ + ": " + e.msg }

// decodeAnswer reads a /api/v1/query or query_range answer token by token,
// so that the series are decoded one at a time and the count is checked as
// they come.
func decodeAnswer(dec *json.Decoder, maxSeries int, want string) (answer, error) {
	if err := expectDelim(dec, '{'); err != nil {
		return answer{}, err
	}
	var (
		status, errType, errMsg string
		a                       answer
		haveData                bool
	)
	for dec.More() {
		key, err := objectKey(dec)
		if err != nil {
			return answer{}, err
		}
		switch key {
		case "status":
			err = dec.Decode(&status)
		case "errorType":
			err = dec.Decode(&errType)
		case "error":
			err = dec.Decode(&errMsg)
		case "data":
			a, err = decodeData(dec, maxSeries, want)
			haveData = true
		default: // warnings, infos, and whatever a later version adds
			err = skipValue(dec)
		}
		if err != nil {
			return answer{}, err
		}
	}
	if _, err := dec.Token(); err != nil { // '}'
		return answer{}, err
	}
	if status == "error" {
		return answer{}, &apiError{typ: errType, msg: errMsg}
	}
	if status != "success" || !haveData {
		return answer{}, fmt.Errorf("decoding answer: status %q without data, want a Prometheus query API answer", status)
	}
	if a.vector == nil && want == resultVector {
		a.vector = model.Vector{}
	}
	if a.matrix == nil && want == resultMatrix {
		a.matrix = model.Matrix{}
	}
	return a, nil
}

// decodeData decodes the data object: {"resultType": ..., "result": ...}.
// Prometheus writes resultType first; the result is decoded by it.
func decodeData(dec *json.Decoder, maxSeries int, want string) (answer, error) {
	if err := expectDelim(dec, '{'); err != nil {
		return answer{}, err
	}
	var (
		typ string
		a   answer
	)
	for dec.More() {
		key, err := objectKey(dec)
		if err != nil {
			return answer{}, err
		}
		switch {
		case key == "resultType":
			err = dec.Decode(&typ)
		case key == "result" && typ == "":
			err = errors.New("decoding answer: result before resultType; is this a Prometheus query API?")
		case key == "result" && want == resultVector && typ == "vector":
			a.vector, err = decodeSeries[model.Sample](dec, maxSeries)
		case key == "result" && want == resultVector && typ == "scalar":
			var s model.Scalar
			if err = dec.Decode(&s); err == nil {
				a.vector = model.Vector{{Metric: model.Metric{}, Value: s.Value, Timestamp: s.Timestamp}}
			}
		case key == "result" && want == resultMatrix && typ == "matrix":
			a.matrix, err = decodeSeries[model.SampleStream](dec, maxSeries)
		case key == "result" && want == resultVector:
			err = fmt.Errorf("query returned a %s, want an instant vector or scalar", typ)
		case key == "result":
			err = fmt.Errorf("range query returned a %s, want a matrix", typ)
		default:
			err = skipValue(dec)
		}
		if err != nil {
			return answer{}, err
		}
	}
	_, err := dec.Token() // '}'
	return a, err
}

// decodeSeries decodes a result array one series at a time (a vector's
// samples or a matrix's sample streams), failing past maxSeries.
func decodeSeries[E model.Sample | model.SampleStream](dec *json.Decoder, maxSeries int) ([]*E, error) {
	if err := expectDelim(dec, '['); err != nil {
		return nil, err
	}
	out := []*E{}
	for dec.More() {
		if len(out) == maxSeries {
			return nil, &LimitError{Series: true, Limit: int64(maxSeries)}
		}
		s := new(E)
		if err := dec.Decode(s); err != nil {
			return nil, fmt.Errorf("decoding series %d: %w", len(out), err)
		}
		out = append(out, s)
	}
	_, err := dec.Token() // ']'
	return out, err
}

func expectDelim(dec *json.Decoder, want json.Delim) error {
	tok, err := dec.Token()
	if err != nil {
		return err
	}
	if d, ok := tok.(json.Delim); !ok || d != want {
		return fmt.Errorf("decoding answer: got %v where %v belongs", tok, want)
	}
	return nil
}

func objectKey(dec *json.Decoder) (string, error) {
	tok, err := dec.Token()
	if err != nil {
		return "", err
	}
	key, ok := tok.(string)
	if !ok {
		return "", fmt.Errorf("decoding answer: got %v where a key belongs", tok)
	}
	return key, nil
}

// skipValue reads past one value token by token, holding none of it.
func skipValue(dec *json.Decoder) error {
	depth := 0
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
		if depth == 0 {
			return nil
		}
	}
}

// limitedBody fails a read past limit bytes with a LimitError, and keeps
// the first bytes for the message about an answer that is not JSON.
type limitedBody struct {
	r     io.Reader
	left  int64
	limit int64
	head  []byte
	err   error
}

const headBytes = 256

func (b *limitedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err // the decoder may read again after an error
	}
	if b.left <= 0 {
		// One byte more tells a body of exactly the limit from a longer one.
		var one [1]byte
		if n, _ := io.ReadFull(b.r, one[:]); n == 0 {
			b.err = io.EOF
		} else {
			b.err = &LimitError{Limit: b.limit}
		}
		return 0, b.err
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	if len(b.head) < headBytes {
		b.head = append(b.head, p[:min(n, headBytes-len(b.head))]...)
	}
	return n, err
}

func oneLine(b []byte) string {
	s := strings.Join(strings.Fields(string(b)), " ")
	if s == "" {
		return "(empty body)"
	}
	return s
}
