// A Forward client for flaghook's peer tests (tests/sources/peers_fluent.rs): posts the
// test harness's feature_event for ids start..start+count through fluent-logger-golang to
// flaghook's fluent source and prints {"sent":N,"failed":N}. Exits 1 when a post failed,
// 4 when the client is still waiting after -stuck-after. With -ack (the default), a post
// counts as sent only once flaghook answered its chunk id.
//
// Built by the test with GO111MODULE=off GOPATH=/usr/share/gocode against Debian's
// golang-github-fluent-fluent-logger-golang-dev: no module download.
package main

import (
	"flag"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/fluent/fluent-logger-golang/fluent"
)

// featureEvent is GO Feature Flag's feature event (its exporter.FeatureEvent, with msg
// tags for its json ones); the client sends a struct as a map keyed by the tags, in Go's map
// order (random).
type featureEvent struct {
	Kind         string      `msg:"kind"`
	ContextKind  string      `msg:"contextKind"`
	UserKey      string      `msg:"userKey"`
	CreationDate int64       `msg:"creationDate"`
	Key          string      `msg:"key"`
	Variation    string      `msg:"variation"`
	Value        interface{} `msg:"value"`
	Default      bool        `msg:"default"`
	Version      string      `msg:"version"`
	Source       string      `msg:"source"`
}

// feature is the test harness's feature_event(i) (tests/harness/events.rs).
func feature(i int) featureEvent {
	return featureEvent{
		Kind:         "feature",
		ContextKind:  "user",
		UserKey:      fmt.Sprintf("user-%d", i),
		CreationDate: int64(1700000000 + i),
		Key:          fmt.Sprintf("flag-%d", i),
		Variation:    "on",
		Value:        true,
		Default:      false,
		Version:      "v1",
		Source:       "SERVER",
	}
}

// results counts the posts sent and failed and keeps the first error: in async mode they
// are reported on the client's own goroutine.
type results struct {
	mu     sync.Mutex
	sent   int
	failed int
	first  error
}

func (r *results) add(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err == nil {
		r.sent++
		return
	}
	if r.failed == 0 {
		r.first = err
	}
	r.failed++
}

func main() {
	port := flag.Int("port", 24224, "flaghook's fluent source port")
	start := flag.Int("start", 0, "first event id")
	count := flag.Int("count", 1, "how many events")
	async := flag.Bool("async", false, "Config.Async: Post queues, a goroutine sends")
	subSecond := flag.Bool("subsecond", false, "Config.SubSecondPrecision: EventTime, not integer seconds")
	ack := flag.Bool("ack", true, "Config.RequestAck: a chunk id per entry, Post waits for its ack")
	reconnect := flag.Int("reconnect-ms", 0, "Config.AsyncReconnectInterval: a new connection this often")
	stuck := flag.Duration("stuck-after", 20*time.Second, "give up after this long")
	flag.Parse()

	// The client sets no read deadline: an ack that never comes holds Post forever.
	time.AfterFunc(*stuck, func() {
		fmt.Printf("{\"error\":\"stuck: still sending after %s\"}\n", *stuck)
		os.Exit(4)
	})

	var done results
	config := fluent.Config{
		FluentHost:             "127.0.0.1",
		FluentPort:             *port,
		Async:                  *async,
		SubSecondPrecision:     *subSecond,
		RequestAck:             *ack,
		AsyncReconnectInterval: *reconnect,
	}
	if *async {
		// Called once per post with the send's result (nil: written, and acked with -ack).
		config.AsyncResultCallback = func(_ []byte, err error) { done.add(err) }
	}
	logger, err := fluent.New(config)
	if err != nil {
		fmt.Fprintf(os.Stderr, "fluent.New: %v\n", err)
		os.Exit(1)
	}
	for id := *start; id < *start+*count; id++ {
		// Sync: Post returns once the entry is written (and acked). Async: it only queues.
		if err := logger.Post("goff", feature(id)); err != nil || !*async {
			done.add(err)
		}
	}
	// Async: Close returns once the queue is sent and every result reported.
	if err := logger.Close(); err != nil {
		fmt.Fprintf(os.Stderr, "close: %v\n", err)
		os.Exit(1)
	}
	fmt.Printf("{\"sent\":%d,\"failed\":%d}\n", done.sent, done.failed)
	if done.failed > 0 || done.sent != *count {
		fmt.Fprintf(os.Stderr, "first error: %v\n", done.first)
		os.Exit(1)
	}
}
