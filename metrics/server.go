package metrics

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Readiness collects the conditions /readyz reports on. Each condition has a
// name and is either met or not, with a reason when it is not; each is also
// exported as revoker_ready{condition}.
type Readiness struct {
	gauge *prometheus.GaugeVec

	mu    sync.Mutex
	conds map[string]string // name -> "" when met, else why not
	order []string
	sets  map[string]uint64 // name -> how often it was set: a Lapse meets it only if it was not set since
}

// NewReadiness registers revoker_ready on reg and returns a Readiness with
// the named conditions, all unmet; a condition first named by Set starts
// met.
func NewReadiness(reg prometheus.Registerer, unmet ...string) *Readiness {
	r := &Readiness{
		gauge: promauto.With(reg).NewGaugeVec(prometheus.GaugeOpts{
			Name: "revoker_ready",
			Help: "1 while the condition holds; /readyz is 200 when all are 1.",
		}, []string{"condition"}),
		conds: make(map[string]string),
	}
	for _, n := range unmet {
		r.Set(n, "not yet")
	}
	return r
}

// Declare adds condition name, met, unless it is known already.
func (r *Readiness) Declare(name string) {
	r.mu.Lock()
	_, known := r.conds[name]
	r.mu.Unlock()
	if !known {
		r.Set(name, "")
	}
}

// Set marks condition name met (why == "") or unmet with a reason.
func (r *Readiness) Set(name, why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.set(name, why)
}

// Lapse marks condition name unmet with why, and met again after d unless
// it is set again meanwhile, by anyone: for a trouble that shows only
// while it recurs (calls that get no answer). met, when not nil, is called
// once it is met so.
func (r *Readiness) Lapse(name, why string, d time.Duration, met func()) {
	r.mu.Lock()
	r.set(name, why)
	n := r.sets[name]
	r.mu.Unlock()
	time.AfterFunc(d, func() {
		r.mu.Lock()
		_, known := r.conds[name]
		lapsed := known && r.sets[name] == n
		if lapsed {
			r.set(name, "")
		}
		r.mu.Unlock()
		if lapsed && met != nil {
			met()
		}
	})
}

// set is Set with r.mu held.
func (r *Readiness) set(name, why string) {
	if r.sets == nil {
		r.sets = map[string]uint64{}
	}
	r.sets[name]++
	if _, ok := r.conds[name]; !ok {
		r.order = append(r.order, name)
	}
	r.conds[name] = why
	v := 0.0
	if why == "" {
		v = 1
	}
	r.gauge.WithLabelValues(name).Set(v)
}

// Update is Set for a condition already known: one removed meanwhile (a
// credential taken out of the credentials file, while a call or a check
// of it was under way) stays removed. It reports whether it was known.
func (r *Readiness) Update(name, why string) bool {
	r.mu.Lock()
	_, known := r.conds[name]
	r.mu.Unlock()
	if known {
		r.Set(name, why)
	}
	return known
}

// Remove forgets condition name and its series: a credential taken out of
// the credentials file no longer counts, met or not.
func (r *Readiness) Remove(name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, ok := r.conds[name]; !ok {
		return
	}
	delete(r.conds, name)
	r.order = slices.DeleteFunc(r.order, func(n string) bool { return n == name })
	r.gauge.DeleteLabelValues(name)
}

// Names lists the conditions known, in the order they were first named.
func (r *Readiness) Names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.order)
}

// Why is why condition name is not met; "" when it is (or is unknown).
func (r *Readiness) Why(name string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conds[name]
}

// Met reports whether condition name is met (an unknown one is).
func (r *Readiness) Met(name string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.conds[name] == ""
}

// Gauge is the revoker_ready series of condition name.
func (r *Readiness) Gauge(name string) prometheus.Gauge { return r.gauge.WithLabelValues(name) }

// CredentialGroup is the prefix of the conditions of named credentials
// (SPEC §6): ready needs only one of them met, as a refused credential
// makes only its own accounts wait.
const CredentialGroup = "credential:"

// Ready reports whether every condition is met (of the credential group,
// at least one), and what is not met, ready or not.
func (r *Readiness) Ready() (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var not []string
	ok, creds, credsMet := true, 0, 0
	for _, n := range r.order {
		why := r.conds[n]
		if strings.HasPrefix(n, CredentialGroup) {
			creds++
			if why == "" {
				credsMet++
			}
		} else if why != "" {
			ok = false
		}
		if why != "" {
			not = append(not, n+": "+why)
		}
	}
	if creds > 0 && credsMet == 0 {
		ok = false
	}
	return ok, strings.Join(not, "; ")
}

// Handler serves /metrics from g, /healthz, and /readyz from ready.
func Handler(g prometheus.Gatherer, ready *Readiness) http.Handler {
	mux := http.NewServeMux()
	// OpenMetrics when asked for: the only exposition that carries the
	// latency histogram's exemplars (trace ids, SPEC §13).
	mux.Handle("GET /metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, why := ready.Ready()
		if !ok {
			http.Error(w, "not ready: "+why, http.StatusServiceUnavailable)
			return
		}
		if why != "" {
			// Ready with a credential refused: its accounts wait.
			fmt.Fprintln(w, "ready; not met: "+why)
			return
		}
		fmt.Fprintln(w, "ready")
	})
	return mux
}

// Server is the HTTP server for the endpoints.
type Server struct {
	srv *http.Server
	ln  net.Listener

	mu       sync.Mutex
	begun    uint64        // scrapes of /metrics begun
	answered uint64        // the latest-begun scrape answered
	news     chan struct{} // closed when a scrape is answered
}

// Connection limits of the endpoints' server. Requests carry no body and
// answers are small, so reading and writing are short; an idle keep-alive
// connection is kept long enough for a scrape every minute to reuse it, and
// then closed so idle scrapers cannot pile up open connections.
var (
	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	// writeTimeout bounds gathering and writing /metrics.
	writeTimeout = 30 * time.Second
	// idleTimeout is a var so a test can wait for it.
	idleTimeout = 2 * time.Minute
)

// Listen binds addr (":8080"; ":0" picks a free port).
func Listen(addr string, h http.Handler) (*Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w", addr, err)
	}
	s := &Server{ln: ln, news: make(chan struct{})}
	s.srv = &http.Server{
		Handler:           s.counting(h),
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
	}
	return s, nil
}

// counting counts the scrapes of /metrics h answers (AwaitScrape).
func (s *Server) counting(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			h.ServeHTTP(w, r)
			return
		}
		s.mu.Lock()
		s.begun++
		n := s.begun
		s.mu.Unlock()
		h.ServeHTTP(w, r)
		s.mu.Lock()
		s.answered = max(s.answered, n)
		close(s.news)
		s.news = make(chan struct{})
		s.mu.Unlock()
	})
}

// Scrapes is how many scrapes of /metrics have begun.
func (s *Server) Scrapes() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.begun
}

// AwaitScrape waits up to d for a scrape of /metrics begun after the
// first `after` to be answered, and reports whether one was: a count made
// just before a process stops is worth something only once read.
func (s *Server) AwaitScrape(after uint64, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	for {
		s.mu.Lock()
		answered, news := s.answered > after, s.news
		s.mu.Unlock()
		if answered {
			return true
		}
		select {
		case <-news:
		case <-t.C:
			return false
		}
	}
}

// Addr is the address actually bound.
func (s *Server) Addr() string { return s.ln.Addr().String() }

// Serve serves until ctx is done, then shuts down within a few seconds.
func (s *Server) Serve(ctx context.Context) error {
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(s.ln) }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return nil
}
