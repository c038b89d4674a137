package ingress

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"time"

	"go.uber.org/zap"
)

// certCheckEvery is how often the certificate files are looked at: at most
// once a second, not on every handshake.
const certCheckEvery = time.Second

// certReloader serves the certificate pair of two files, loading it again
// when either file changes (its modification time or size). A pair that
// does not load keeps the previous one in use, and is logged once.
type certReloader struct {
	certFile, keyFile string
	log               *zap.Logger

	mu      sync.Mutex
	pair    *tls.Certificate
	stamp   [2]fileStamp
	checked time.Time
	lastErr string
}

type fileStamp struct {
	mod  time.Time
	size int64
}

// newCertReloader loads the pair once; an error is a bad configuration.
func newCertReloader(certFile, keyFile string, log *zap.Logger) (*certReloader, error) {
	c := &certReloader{certFile: certFile, keyFile: keyFile, log: log}
	st, err := c.stamps()
	if err != nil {
		return nil, err
	}
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("ingress TLS certificate and key: %w", err)
	}
	c.pair, c.stamp, c.checked = &pair, st, time.Now()
	return c, nil
}

// CheckTLS reports whether the pair in certFile and keyFile loads, so that
// a bad one stops the start at once.
func CheckTLS(certFile, keyFile string) error {
	_, err := tls.LoadX509KeyPair(certFile, keyFile)
	return err
}

func (c *certReloader) stamps() ([2]fileStamp, error) {
	var st [2]fileStamp
	for i, f := range []string{c.certFile, c.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return st, err
		}
		st[i] = fileStamp{fi.ModTime(), fi.Size()}
	}
	return st, nil
}

// get is tls.Config.GetCertificate.
func (c *certReloader) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := time.Now(); now.Sub(c.checked) >= certCheckEvery {
		c.checked = now
		c.reload()
	}
	return c.pair, nil
}

// reload loads the pair again if a file changed since the pair in use.
func (c *certReloader) reload() {
	st, err := c.stamps()
	if err == nil && st == c.stamp {
		return
	}
	if err == nil {
		var pair tls.Certificate
		pair, err = tls.LoadX509KeyPair(c.certFile, c.keyFile)
		if err == nil {
			c.pair, c.stamp, c.lastErr = &pair, st, ""
			c.log.Info("ingress TLS certificate reloaded")
			return
		}
	}
	// Logged once per distinct cause; the files are looked at again on
	// later handshakes (a certificate and its key are often written one
	// after the other).
	if msg := err.Error(); msg != c.lastErr {
		c.lastErr = msg
		c.log.Error("ingress TLS certificate cannot be loaded; keeping the previous one", zap.Error(err))
	}
}
