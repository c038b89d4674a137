package main

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/pprof"
	"time"

	"go.uber.org/zap"
)

// debugHandler serves Go's profiler under /debug/pprof/ on its own mux, so
// nothing of it reaches the metrics address or http.DefaultServeMux users.
func debugHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// serveDebug serves the profiler on addr (REVOKER_DEBUG_ADDR, which config
// allows only on loopback) until ctx ends; an empty addr serves nothing.
// It returns once listening, so a bad address fails the command at start.
func serveDebug(ctx context.Context, addr string, log *zap.Logger) error {
	if addr == "" {
		return nil
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	// No write timeout: a CPU profile streams for as long as it was asked.
	srv := &http.Server{Handler: debugHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Warn("profiler server", zap.Error(err))
		}
	}()
	context.AfterFunc(ctx, func() { srv.Close() })
	log.Info("serving the profiler", zap.String("addr", l.Addr().String()))
	return nil
}
