// Command webhook-receiver stands for Slack and for a webhook endpoint in
// the demo (make demo): it takes the watcher's notifications on loopback
// and writes each one, readably, to its output. A webhook's
// X-Watcher-Signature is checked as a real receiver checks it: the HMAC of
// the raw body with the shared secret, compared in constant time (README
// "Notifications, holds and verification").
package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
)

func main() {
	listen := flag.String("listen", "127.0.0.1:0", "address to listen on")
	addrFile := flag.String("addr-file", "", "file to write the base URL to once listening (http://127.0.0.1:PORT)")
	secretFile := flag.String("secret-file", "", "file with the webhook's HMAC secret")
	out := flag.String("out", "", "file to append the notifications to (default: standard output)")
	flag.Parse()

	var secret []byte
	if *secretFile != "" {
		b, err := os.ReadFile(*secretFile)
		if err != nil {
			log.Fatal(err)
		}
		secret = []byte(strings.TrimSpace(string(b)))
	}
	w := io.Writer(os.Stdout)
	if *out != "" {
		f, err := os.OpenFile(*out, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			log.Fatal(err)
		}
		defer f.Close()
		w = f
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	if *addrFile != "" {
		if err := os.WriteFile(*addrFile, []byte("http://"+ln.Addr().String()+"\n"), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	var mu sync.Mutex
	log.Fatal(http.Serve(ln, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(io.LimitReader(r.Body, 1<<20))
		if err != nil || r.Method != http.MethodPost {
			http.Error(rw, "POST a notification", http.StatusBadRequest)
			return
		}
		text := describe(r, body, secret)
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprint(w, text)
	})))
}

// describe is one notification as a person reads it.
func describe(r *http.Request, body, secret []byte) string {
	var b strings.Builder
	// Both carry X-Watcher-Kind; only a webhook is signed.
	if sig := r.Header.Get("X-Watcher-Signature"); sig != "" {
		kind := r.Header.Get("X-Watcher-Kind")
		mac := hmac.New(sha256.New, secret)
		mac.Write(body)
		check := "signature ok"
		if want := "sha256=" + hex.EncodeToString(mac.Sum(nil)); !hmac.Equal([]byte(want), []byte(sig)) {
			check = "BAD SIGNATURE"
		}
		fmt.Fprintf(&b, "--- webhook %s: %s (delivery %s, %s)\n", r.URL.Path, kind, r.Header.Get("X-Watcher-Delivery"), check)
		var rec struct {
			Service     string `json:"service"`
			Environment string `json:"environment"`
			Message     string `json:"message"`
		}
		_ = json.Unmarshal(body, &rec)
		fmt.Fprintf(&b, "    %s in %s: %s\n", rec.Service, rec.Environment, rec.Message)
		return b.String()
	}
	var msg struct {
		Text   string `json:"text"`
		Blocks []struct {
			Text *struct {
				Text string `json:"text"`
			} `json:"text"`
		} `json:"blocks"`
	}
	if err := json.Unmarshal(body, &msg); err != nil {
		return fmt.Sprintf("--- %s: not JSON (%v)\n", r.URL.Path, err)
	}
	// As Slack shows it: its three escapes undone, links left as written.
	unescape := strings.NewReplacer("&lt;", "<", "&gt;", ">", "&amp;", "&").Replace
	fmt.Fprintf(&b, "--- slack %s\n    %s\n", r.URL.Path, msg.Text)
	for i, blk := range msg.Blocks {
		if blk.Text == nil || i == 0 {
			continue // the first block repeats the text
		}
		for _, l := range strings.Split(blk.Text.Text, "\n") {
			fmt.Fprintf(&b, "    %s\n", unescape(l))
		}
	}
	return b.String()
}
